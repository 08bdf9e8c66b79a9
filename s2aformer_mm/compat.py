"""Import-time checks of the stack, with errors that name the fix.

Two OpenMMLab 2.x lines are supported, each with its tested versions (:data:`LINES`):
``upstream``, the official packages (frozen since 2024), and ``onedl``, their maintained
continuation (``onedl-mm*`` on PyPI). Both install the same import names (``mmcv``,
``mmengine``, ``mmdet``, ...), so they are told apart by distribution name, and an
environment must hold exactly one of them. ``tools/setup_env.sh`` sets up either
(``S2A_STACK=upstream|onedl``).
"""
import importlib.util
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

#: line -> import name -> (distribution, tested version, lowest supported, first unsupported).
LINES = {
    'upstream': {
        # 0.10.7 is upstream's last release; 0.10.4 is the oldest with what we use
        'mmengine': ('mmengine', '0.10.7', '0.10.4', '1.0'),
        # mmdet 3.3 and mmseg 1.2.2 assert mmcv < 2.2.0; mmpretrain 1.2 needs < 2.4.
        'mmcv': ('mmcv', '2.1.0', '2.0.0rc4', '2.2.0'),
        'mmpretrain': ('mmpretrain', '1.2.0', '1.2.0', '1.3.0'),
        'mmseg': ('mmsegmentation', '1.2.2', '1.2.0', '1.3.0'),
        'mmdet': ('mmdet', '3.3.0', '3.3.0', '3.4.0'),
    },
    # Tested 2026-12-06. Later patch releases of the tested minor versions are accepted.
    'onedl': {
        'mmengine': ('onedl-mmengine', '0.10.12', '0.10.12', '0.11'),
        # onedl-mmpretrain 1.3.6 asserts mmcv < 2.4.0 (onedl-mmdet 3.5 / -mmseg 1.4 assert none)
        'mmcv': ('onedl-mmcv', '2.3.6', '2.3.6', '2.4.0'),
        'mmpretrain': ('onedl-mmpretrain', '1.3.6', '1.3.6', '1.4.0'),
        'mmseg': ('onedl-mmsegmentation', '1.4.2', '1.4.2', '1.5.0'),
        'mmdet': ('onedl-mmdetection', '3.5.1', '3.5.1', '3.6.0'),
    },
}


def pin(line: str, lib: str) -> str:
    """The tested requirement of ``lib`` on ``line``, e.g. ``'onedl-mmcv==2.3.6'``."""
    dist, tested = LINES[line][lib][:2]
    return f'{dist}=={tested}'


def setup_command(line: str, venv: str = '') -> str:
    """The command that sets up ``line`` (in ``venv`` if given)."""
    env = '' if line == 'upstream' else f'S2A_STACK={line} '
    env += f'S2A_VENV={venv} ' if venv else ''
    return f'{env}bash tools/setup_env.sh'


def fix(line: str) -> str:
    """The sentence that tells how to set up ``line``."""
    mmcv = pin(line, 'mmcv').replace('==', ' ')
    return f'Run "{setup_command(line)}" (builds {mmcv} with ops against your torch).'


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
        f'then rebuild mmcv against it. {fix(_reference_line())}')


def _installed(lib: str):
    """[(line, distribution, version)] for each installed distribution of ``lib``."""
    found = []
    for line, libs in LINES.items():
        try:
            found.append((line, libs[lib][0], version(libs[lib][0])))
        except PackageNotFoundError:
            pass
    return found


def _reference_line() -> str:
    """The line of the installed mmcv (the compiled, slowest part to replace), else of
    mmengine, else the default."""
    for lib in ('mmcv', 'mmengine'):
        found = _installed(lib)
        if len(found) == 1:
            return found[0][0]
    return 'upstream'


def installed_line() -> str:
    """Which line the installed OpenMMLab libraries come from ('upstream' if none is).

    Raises ImportError, naming the fix, if an import name has two distributions or the
    libraries come from both lines (e.g. upstream mmdet with onedl-mmcv)."""
    dists = {}  # line -> [(import name, 'mmdet 3.3.0'), ...]
    for lib in LINES['upstream']:
        found = _installed(lib)
        if len(found) > 1:
            both = ' and '.join(f'{d} {v}' for _, d, v in found)
            raise ImportError(
                f'{lib} is installed twice, as {both}, which overwrote each other\'s files (the '
                f'upstream and the onedl line share import names). Fix: set up one line in a new '
                f'venv: "{setup_command(_reference_line(), "<new venv>")}".')
        for line, dist, v in found:
            dists.setdefault(line, []).append((lib, f'{dist} {v}'))
    if len(dists) < 2:
        return next(iter(dists), 'upstream')
    line = _reference_line()
    other = next(x for x in dists if x != line)
    wrong = dists.pop(other)
    raise ImportError(
        f'{", ".join(w for _, w in wrong)} ({other} line) cannot run with '
        f'{", ".join(w for _, w in dists[line])} ({line} line): the upstream and the onedl '
        f'OpenMMLab packages share import names and do not mix. Fix: pip uninstall -y '
        f'{" ".join(w.split()[0] for _, w in wrong)} && pip install --no-deps '
        f'{" ".join(pin(line, lib) for lib, _ in wrong)}, or set up one line in a new venv: '
        f'"{setup_command(line, "<new venv>")}".')


def check_stack() -> None:
    """One OpenMMLab line is installed, with a supported mmengine and mmcv with its ops."""
    line = installed_line()
    for lib in ('mmengine', 'mmcv'):
        dist, tested, lo, hi = LINES[line][lib]
        try:
            v = Version(version(dist))
        except PackageNotFoundError:
            lite = ' (mmcv-lite is not enough)' if lib == 'mmcv' else ''
            raise ImportError(f'{lib} is not installed{lite}. {fix(line)}') from None
        if not Version(lo) <= v < Version(hi):
            raise ImportError(
                f'{dist} {v} is incompatible: the {line} line needs {lo} <= {dist} < {hi}. '
                f'Install {dist}=={tested}. {fix(line)}')
    if importlib.util.find_spec('mmcv._ext') is None:
        raise ImportError(
            'mmcv is installed without its compiled ops (mmcv._ext is missing), which happens '
            f'when it is built without torch visible. Rebuild it: pip uninstall -y '
            f'{LINES[line]["mmcv"][0]} && MMCV_WITH_OPS=1 pip install --no-build-isolation '
            f'--no-cache-dir {pin(line, "mmcv")}. {fix(line)}')


def check_openmmlab(lib: str, pip_spec: str) -> None:
    """Raise if an installed OpenMMLab library has an untested version."""
    line = installed_line()
    dist, _, lo, hi = LINES[line][lib]
    try:
        v = Version(version(dist))
    except PackageNotFoundError:
        return  # absent: integrations.require() reports it when it is used
    if not Version(lo) <= v < Version(hi):
        raise ImportError(
            f'{dist} {v} is not supported: s2aformer_mm needs {lo} <= {dist} < {hi}. '
            f'Install it with: pip install {pip_spec}  (or run {setup_command(line)}).')
