#!/usr/bin/env bash
# Idempotent set-up of the full OpenMMLab 2.x stack for s2aformer-mm in a project-local venv.
#
#   bash tools/setup_env.sh            # set up (or verify) .venv
#
# Environment knobs:
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
VENV="${S2A_VENV:-$REPO/.venv}"
PY_BOOT="${S2A_PYTHON:-python3}"
CACHE="${S2A_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s2aformer-mm}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.29.1}"
MMCV_VERSION="2.1.0"
# setuptools: < 80 because mmcv's setup.py imports pkg_resources; >= 70.1 because older ones
# (a venv's own 65.x) have no 'bdist_wheel' without the 'wheel' package, and only torch
# 2.14's dependencies happened to upgrade it.
STACK=(mmengine==0.10.7 mmpretrain==1.2.0 mmsegmentation==1.2.2 mmdet==3.3.0
       ftfy regex "pycocotools>=2.0.8" "setuptools>=70.1,<80" ninja psutil pytest ruff==0.17.5 tensorboard==2.21.0 onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2)

t0=$SECONDS
step() { printf '\n[setup %4ds] %s\n' "$((SECONDS - t0))" "$*"; }
die()  { printf '\n[setup] ERROR: %s\n' "$*" >&2; exit 1; }
pipq() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# ---------------------------------------------------------------- preconditions
command -v "$PY_BOOT" >/dev/null || die "no '$PY_BOOT' on PATH. Install Python 3.10 or 3.11 or set S2A_PYTHON=/path/to/python3."
pyver=$("$PY_BOOT" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$pyver" in
  3.10|3.11) ;;
  3.9) die "Python 3.9 is not supported: PyPI has no torch >= 2.12 for it (its last torch is 2.8). Set S2A_PYTHON to a 3.10 or 3.11 interpreter." ;;
  *) die "Python $pyver is not supported: mmcv 2.1.0 / mmdet 3.3.0 are tested up to 3.11. Set S2A_PYTHON to a 3.10 or 3.11 interpreter." ;;
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
  step "installing mmengine, mmpretrain, mmsegmentation, mmdet and helpers (~1 min)"
  pipq install "${STACK[@]}" || die "installing the OpenMMLab stack failed; $net_hint."
fi
# The package's own torch check (compat.py needs only 'packaging'), before an 8-min mmcv build.
"$VENV/bin/python" -c "import importlib.util as u; s = u.spec_from_file_location('c', '$REPO/s2aformer_mm/compat.py'); m = u.module_from_spec(s); s.loader.exec_module(m); m.check_torch()" \
  || die "this torch cannot run s2aformer_mm (reason above); set TORCH_SPEC / TORCHVISION_SPEC to a supported pair."

# ---------------------------------------------------------------- mmcv with ops
mmcv_ok() { "$VENV/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; }
cuda_tag=cpu; [ "${FORCE_CUDA:-0}" = 1 ] && cuda_tag="cuda-${TORCH_CUDA_ARCH_LIST:-default}"
WHEELDIR="$CACHE/mmcv-$MMCV_VERSION/torch-$TORCH_VER-py$pyver-$cuda_tag"
if ! mmcv_ok; then
  whl=$(ls "$WHEELDIR"/mmcv-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    step "building mmcv $MMCV_VERSION with ops against torch $TORCH_VER (~8 min on 2 cores; cached in $WHEELDIR)"
    mkdir -p "$WHEELDIR"
    # mmcv 2.1.0's setup.py hard-codes -std=c++17, but torch >= 2.10 headers require C++20
    # ("#error C++20 or later compatible compiler is required"). A compiler wrapper raises the
    # standard for this build only; mmcv's sources are used unmodified.
    shim="$(mktemp -d)"; trap 'rm -rf "$shim"' EXIT
    real_cxx="$(command -v "${CXX:-g++}")"
    printf '#!/bin/sh\nfor a; do shift; case "$a" in -std=c++1[147]) a=-std=c++20;; esac; set -- "$@" "$a"; done\nexec "%s" "$@"\n' "$real_cxx" > "$shim/cxx"
    chmod +x "$shim/cxx"
    # --no-build-isolation: the build must see the installed torch, else mmcv ships without ops.
    # --no-cache-dir: pip's own cache is keyed by sdist, not torch version (ABI mismatch risk).
    CXX="$shim/cxx" MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$VENV/bin/python" -m pip --disable-pip-version-check \
      wheel -q --no-deps --no-build-isolation --no-cache-dir -w "$WHEELDIR" "mmcv==$MMCV_VERSION" \
      || die "building mmcv failed (see compiler output above). Needs g++, Python headers and 'setuptools>=70.1,<80' (it has bdist_wheel and pkg_resources)."
    whl=$(ls "$WHEELDIR"/mmcv-*.whl | head -1)
  else
    step "installing cached mmcv wheel $(basename "$whl")"
  fi
  pipq install --no-deps --force-reinstall "$whl" || die "installing $whl failed."
  # mmcv's runtime requirements (addict, yapf, opencv...) without touching torch.
  pipq install addict packaging pyyaml yapf opencv-python Pillow numpy
  mmcv_ok || die "mmcv installed but 'import mmcv.ops' fails: it was built without ops. Delete $WHEELDIR and rerun."
fi

# ---------------------------------------------------------------- this package
# Checked from / so that the repo itself (cwd) cannot satisfy the import.
if ! (cd / && "$VENV/bin/python" -c 'import s2aformer_mm, sys; sys.exit(0 if s2aformer_mm.__file__.startswith(sys.argv[1]) else 1)' "$REPO") 2>/dev/null; then
  step "installing s2aformer_mm in editable mode"
  pipq install --no-deps --no-build-isolation -e "$REPO" || die "pip install -e $REPO failed."
fi

step "environment ready: torch $TORCH_VER, mmcv $MMCV_VERSION (ops), venv $VENV"
