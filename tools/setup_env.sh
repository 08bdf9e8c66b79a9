#!/usr/bin/env bash
# Idempotent set-up of the full OpenMMLab 2.x stack for s2aformer-mm in a project-local venv.
#
#   bash tools/setup_env.sh                                          # set up (or verify) .venv
#   S2A_STACK=onedl S2A_VENV=.venv-onedl bash tools/setup_env.sh      # the maintained line
#
# Environment knobs:
#   S2A_STACK       which OpenMMLab line, each with exact pins (default: upstream):
#                     upstream  mmengine 0.10.7, mmcv 2.1.0, mmpretrain 1.2.0, mmsegmentation 1.2.2,
#                               mmdet 3.3.0 (the official packages, frozen since 2024)
#                     onedl     the maintained continuation, same import names: onedl-mmengine
#                               0.10.12, onedl-mmcv 2.3.6, onedl-mmpretrain 1.3.6,
#                               onedl-mmsegmentation 1.4.2, onedl-mmdetection 3.5.1
#                   A venv holds one line only: to switch, use another S2A_VENV or remove the venv.
#   S2A_VENV        venv location                       (default: <repo>/.venv)
#   S2A_PYTHON      interpreter used to create the venv (default: python3)
#   S2A_CACHE       wheel cache outside the repo        (default: ~/.cache/s2aformer-mm)
#   TORCH_SPEC      torch pin                           (default: torch==2.14.1)
#   TORCHVISION_SPEC torchvision pin, must match torch  (default: torchvision==0.29.1)
#   FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0"  build mmcv's CUDA kernels (GPU users; slow)
#
# Why each step exists is in ../README.md ("Installation") and docs of the stack breakages.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${S2A_VENV:-$REPO/.venv}")"   # absolute: the steps below change directory
PY_BOOT="${S2A_PYTHON:-python3}"
CACHE="${S2A_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s2aformer-mm}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.29.1}"
S2A_STACK="${S2A_STACK:-upstream}"
MMCV_DIST=mmcv MMCV_VERSION="2.1.0" MMCV_BUILD_NEEDS="'setuptools>=70.1,<80' (bdist_wheel and pkg_resources)"
# setuptools: < 80 because mmcv's setup.py imports pkg_resources; >= 70.1 because older ones
# (a venv's own 65.x) have no 'bdist_wheel' without the 'wheel' package, and only torch
# 2.14's dependencies happened to upgrade it.
STACK=(mmengine==0.10.7 mmpretrain==1.2.0 mmsegmentation==1.2.2 mmdet==3.3.0
       ftfy regex "pycocotools>=2.0.8" "setuptools>=70.1,<80" ninja psutil pytest ruff==0.17.5 tensorboard==2.21.0 onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2)

t0=$SECONDS
step() { printf '\n[setup %4ds] %s\n' "$((SECONDS - t0))" "$*"; }
die()  { printf '\n[setup] ERROR: %s\n' "$*" >&2; exit 1; }
pipq() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# ---------------------------------------------------------------- stack choice
case "$S2A_STACK" in
  upstream) ;;
  onedl)
    # The maintained line replaces the four libraries (and mmcv) in STACK; the helpers stay.
    # setuptools >= 80: onedl-mmcv 2.3.6 declares it as its build requirement, and nothing on
    # this line imports pkg_resources (the reason for < 80 upstream).
    MMCV_DIST=onedl-mmcv MMCV_VERSION="2.3.6" MMCV_BUILD_NEEDS="'setuptools>=80' (its declared build requirement)"
    helpers=()
    for s in "${STACK[@]}"; do
      case "$s" in mmengine==*|mmpretrain==*|mmsegmentation==*|mmdet==*|setuptools*) ;; *) helpers+=("$s") ;; esac
    done
    STACK=(onedl-mmengine==0.10.12 onedl-mmpretrain==1.3.6 onedl-mmsegmentation==1.4.2
           onedl-mmdetection==3.5.1 "${helpers[@]}" "setuptools>=80")
    ;;
  *) die "S2A_STACK=$S2A_STACK is not a stack: use S2A_STACK=upstream (default: mmcv 2.1.0, mmdet 3.3.0, ...) or S2A_STACK=onedl (the maintained onedl-mm* line)." ;;
esac

# ---------------------------------------------------------------- existing venv
# One line per venv: both lines install the same import names (mmcv, mmengine, ...), so a second
# line's packages would overwrite the first's files and leave two distributions behind.
if [ -x "$VENV/bin/python" ]; then
  venv_line=$("$VENV/bin/python" - <<'PY'
from importlib.metadata import distributions
names = {(d.metadata['Name'] or '').lower().replace('_', '-') for d in distributions()}
up = sorted(names & {'mmengine', 'mmcv', 'mmcv-lite', 'mmpretrain', 'mmsegmentation', 'mmdet'})
od = sorted(n for n in names if n.startswith('onedl-mm'))
print(('mixed' if up and od else 'upstream' if up else 'onedl' if od else 'none') + ' ' + ' '.join(up + od))
PY
  ) || die "the venv's python ($VENV/bin/python) does not run. Remove the venv (rm -rf $VENV) and rerun."
  case "${venv_line%% *}" in
    none|"$S2A_STACK") ;;
    mixed) die "venv $VENV mixes the upstream and the onedl line (${venv_line#* }), which share import names. Remove it (rm -rf $VENV) and rerun with S2A_STACK=upstream or S2A_STACK=onedl." ;;
    *) die "venv $VENV holds the ${venv_line%% *} line (${venv_line#* }), but S2A_STACK=$S2A_STACK asks for the $S2A_STACK line; the two share import names and must not be mixed in one venv. Switch with a new venv (S2A_VENV=/path/to/new-venv) or remove this one (rm -rf $VENV), or keep it with S2A_STACK=${venv_line%% *}." ;;
  esac
fi

# ---------------------------------------------------------------- preconditions
# Python: upstream line 3.10 - 3.12, onedl line 3.10 - 3.13 (README, "Supported versions").
case "$S2A_STACK" in upstream) py_ok="3.10 - 3.12" ;; *) py_ok="3.10 - 3.13" ;; esac
# An existing venv's own interpreter counts, not S2A_PYTHON (it also keys the mmcv wheel cache).
if [ -x "$VENV/bin/python" ]; then PY_VER_OF="$VENV/bin/python"; else
  command -v "$PY_BOOT" >/dev/null || die "no '$PY_BOOT' on PATH. Install Python $py_ok or set S2A_PYTHON=/path/to/python3."
  PY_VER_OF="$PY_BOOT"
fi
pyver=$("$PY_VER_OF" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$S2A_STACK:$pyver" in
  *:3.10|*:3.11|*:3.12|onedl:3.13) ;;
  *:3.9) die "Python 3.9 is not supported: PyPI has no torch >= 2.12 for it (its last torch is 2.8). Set S2A_PYTHON to a $py_ok interpreter." ;;
  upstream:3.13) die "Python 3.13 is not supported on the upstream line: mmcv 2.1.0's setup.py reads its version through exec() into locals(), which Python 3.13 no longer updates (PEP 667), so its build stops with KeyError: '__version__'. Set S2A_PYTHON to a 3.10 - 3.12 interpreter, or use the maintained line (S2A_STACK=onedl), which runs on 3.13." ;;
  *) die "Python $pyver is not supported: the $S2A_STACK line is tested on Python $py_ok. Set S2A_PYTHON to such an interpreter." ;;
esac
command -v g++ >/dev/null || die "no C++ compiler (g++): mmcv's ops are compiled from source. Install one, e.g. 'apt-get install -y build-essential'."

# ---------------------------------------------------------------- venv
if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual env $VENV (Python $pyver)"
  "$PY_BOOT" -m venv "$VENV" || die "could not create a venv (Debian: apt-get install python3-venv)."
fi

have() { "$VENV/bin/python" - "$@" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for spec in sys.argv[1:]:
    r = Requirement(spec)
    try:
        v = version(r.name)
    except PackageNotFoundError:
        sys.exit(1)
    if r.specifier and not r.specifier.contains(v, prereleases=True):
        sys.exit(1)
PY
}

net_hint="check network access to PyPI (pip config / proxy)"

# ---------------------------------------------------------------- torch pair
if ! have "$TORCH_SPEC" "$TORCHVISION_SPEC"; then
  step "installing $TORCH_SPEC + $TORCHVISION_SPEC as one matched pair (~1-2 min, several GB)"
  # Both in one resolve: a lone 'torch==X' may pick a local '+cpu' build that has no torchvision.
  pipq install "$TORCH_SPEC" "$TORCHVISION_SPEC" || die "torch install failed; $net_hint."
fi
"$VENV/bin/python" -c 'import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1,4), torch.zeros(1), 0.5)' \
  || die "torch and torchvision do not match (torchvision ops missing). Reinstall a matched pair: TORCH_SPEC / TORCHVISION_SPEC."
TORCH_VER=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')

# ---------------------------------------------------------------- build prerequisites + libraries
if ! have "${STACK[@]}"; then
  step "installing the $S2A_STACK line: ${STACK[*]:0:4} and helpers (~1 min)"
  pipq install "${STACK[@]}" || die "installing the OpenMMLab stack ($S2A_STACK line) failed; $net_hint."
fi
# The package's own torch check (compat.py needs only 'packaging'), before an 8-min mmcv build.
"$VENV/bin/python" -c "import importlib.util as u; s = u.spec_from_file_location('c', '$REPO/s2aformer_mm/compat.py'); m = u.module_from_spec(s); s.loader.exec_module(m); m.check_torch()" \
  || die "this torch cannot run s2aformer_mm (reason above); set TORCH_SPEC / TORCHVISION_SPEC to a supported pair."

# ---------------------------------------------------------------- mmcv with ops
mmcv_ok() { "$VENV/bin/python" -c "import sys, importlib.metadata as md, mmcv, mmcv.ops; sys.exit(md.version('$MMCV_DIST') != '$MMCV_VERSION')" 2>/dev/null; }
cuda_tag=cpu; [ "${FORCE_CUDA:-0}" = 1 ] && cuda_tag="cuda-${TORCH_CUDA_ARCH_LIST:-default}"
# Keyed by line (the distribution name: mmcv / onedl-mmcv), mmcv version, torch, Python, CUDA.
WHEELDIR="$CACHE/$MMCV_DIST-$MMCV_VERSION/torch-$TORCH_VER-py$pyver-$cuda_tag"
if ! mmcv_ok; then
  whl=$(ls "$WHEELDIR"/"${MMCV_DIST//-/_}"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    step "building $MMCV_DIST $MMCV_VERSION with ops against torch $TORCH_VER (~8-10 min on 2 cores; cached in $WHEELDIR)"
    mkdir -p "$WHEELDIR"
    # mmcv 2.1.0's (and onedl-mmcv 2.3.6's) setup.py hard-codes -std=c++17, but torch >= 2.10 headers require C++20
    # ("#error C++20 or later compatible compiler is required"). A compiler wrapper raises the
    # standard for this build only; mmcv's sources are used unmodified.
    shim="$(mktemp -d)"; trap 'rm -rf "$shim"' EXIT
    real_cxx="$(command -v "${CXX:-g++}")"
    printf '#!/bin/sh\nfor a; do shift; case "$a" in -std=c++1[147]) a=-std=c++20;; esac; set -- "$@" "$a"; done\nexec "%s" "$@"\n' "$real_cxx" > "$shim/cxx"
    chmod +x "$shim/cxx"
    # --no-build-isolation: the build must see the installed torch, else mmcv ships without ops.
    # --no-cache-dir: pip's own cache is keyed by sdist, not torch version (ABI mismatch risk).
    CXX="$shim/cxx" MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$VENV/bin/python" -m pip --disable-pip-version-check \
      wheel -q --no-deps --no-build-isolation --no-cache-dir -w "$WHEELDIR" "$MMCV_DIST==$MMCV_VERSION" \
      || die "building $MMCV_DIST failed (see compiler output above). Needs g++, Python headers and $MMCV_BUILD_NEEDS."
    whl=$(ls "$WHEELDIR"/"${MMCV_DIST//-/_}"-*.whl | head -1)
  else
    step "installing cached mmcv wheel $(basename "$whl")"
  fi
  pipq install --no-deps --force-reinstall "$whl" || die "installing $whl failed."
  # mmcv's runtime requirements (addict, yapf, opencv...) without touching torch.
  pipq install addict packaging pyyaml yapf opencv-python Pillow numpy
  mmcv_ok || die "$MMCV_DIST installed but 'import mmcv.ops' fails: it was built without ops. Delete $WHEELDIR and rerun."
fi

# ---------------------------------------------------------------- this package
# Checked from / so that the repo itself (cwd) cannot satisfy the import.
if ! (cd / && "$VENV/bin/python" -c 'import s2aformer_mm, sys; sys.exit(0 if s2aformer_mm.__file__.startswith(sys.argv[1]) else 1)' "$REPO") 2>/dev/null; then
  step "installing s2aformer_mm in editable mode"
  pipq install --no-deps --no-build-isolation -e "$REPO" || die "pip install -e $REPO failed."
fi

step "environment ready: $S2A_STACK line, Python $pyver, torch $TORCH_VER, $MMCV_DIST $MMCV_VERSION (ops), venv $VENV"
