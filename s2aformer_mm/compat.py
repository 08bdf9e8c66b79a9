"""Import-time checks of the stack, with errors that name the fix."""
import importlib.util
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

#: mmdet 3.3 and mmseg 1.2.2 assert mmcv < 2.2.0; mmpretrain 1.2 needs < 2.4.
MMCV_MIN, MMCV_MAX = Version('2.0.0rc4'), Version('2.2.0')
FIX = 'Run "bash tools/setup_env.sh" (builds mmcv 2.1.0 with ops against your torch).'


#: Lowest supported torch; setup.py states the same bound (tests/test_compat.py).
#: Whole test suite passed with 2.12.0, 2.14.1 and 2.15.0. 2.7-2.11 have every API below, but
#: there dynamo folds ``torch.compiler.is_exporting()`` to True inside every
#: ``torch.compile``, so compiled SSA would silently take the SDPA path (the
#: routing can no longer tell compile from export): slower, and SDPA's CPU
#: backward keeps the N x Ns matrix; compile tests fail there.
TORCH_MIN = '2.12'
#: torch APIs the package uses (name -> what for), checked so that the error names them.
TORCH_FEATURES = {
    'library.custom_op': 'the strip-attention operator',
    'compiler.is_exporting': 'routing the attention to SDPA in exported graphs',
    'serialization.add_safe_globals': 'safe checkpoint loading (weights_only=True)',
}


def check_torch() -> None:
    import torch
    missing = []
    for name, use in TORCH_FEATURES.items():
        obj = torch
        for part in name.split('.'):
            obj = getattr(obj, part, None)
        if obj is None:
            missing.append(f'torch.{name} ({use})')
    if missing:
        why = f'it lacks {", ".join(missing)}'
    elif Version(Version(torch.__version__).base_version) < Version(TORCH_MIN):
        why = ('torch.compiler.is_exporting() returns True inside every torch.compile before '
               f'{TORCH_MIN}, so compiled models would silently run the attention on the slow '
               'SDPA path')
    else:
        return
    raise ImportError(
        f'torch {torch.__version__} is too old for s2aformer_mm: {why}. Install torch >= '
        f'{TORCH_MIN} with a matching torchvision (default: torch==2.14.1 torchvision==0.29.1), '
        f'then rebuild mmcv against it. {FIX}')


def check_mmcv() -> None:
    try:
        v = Version(version('mmcv'))
    except PackageNotFoundError:
        raise ImportError(f'mmcv is not installed (mmcv-lite is not enough). {FIX}') from None
    if not MMCV_MIN <= v < MMCV_MAX:
        raise ImportError(
            f'mmcv {v} is incompatible: mmdet 3.3 / mmsegmentation 1.2.2 need '
            f'{MMCV_MIN} <= mmcv < {MMCV_MAX}. Install mmcv==2.1.0. {FIX}')
    if importlib.util.find_spec('mmcv._ext') is None:
        raise ImportError(
            'mmcv is installed without its compiled ops (mmcv._ext is missing), which happens '
            'when it is built without torch visible. Rebuild it: pip uninstall -y mmcv && '
            'MMCV_WITH_OPS=1 pip install --no-build-isolation --no-cache-dir mmcv==2.1.0. ' + FIX)


#: import name -> (distribution, lowest supported, first unsupported) version.
OPENMMLAB = {
    'mmpretrain': ('mmpretrain', '1.2.0', '1.3.0'),
    'mmseg': ('mmsegmentation', '1.2.0', '1.3.0'),
    'mmdet': ('mmdet', '3.3.0', '3.4.0'),
}


def check_openmmlab(lib: str, pip_spec: str) -> None:
    """Raise if an installed OpenMMLab library has an untested version."""
    dist, lo, hi = OPENMMLAB[lib]
    try:
        v = Version(version(dist))
    except PackageNotFoundError:
        return  # absent: integrations.require() reports it when it is used
    if not Version(lo) <= v < Version(hi):
        raise ImportError(
            f'{dist} {v} is not supported: s2aformer_mm needs {lo} <= {dist} < {hi}. '
            f'Install it with: pip install {pip_spec}  (or run bash tools/setup_env.sh).')
