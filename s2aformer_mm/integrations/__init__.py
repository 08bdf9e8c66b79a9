"""Registration of S2AFormer in each OpenMMLab library that is installed.

Each library gets one small module here (``mmpretrain.py``, ``mmseg.py``,
``mmdet.py``) that registers the *same* classes in that library's ``MODELS``.
A library that is not installed is skipped -- detected with ``find_spec``, never
by swallowing an ``ImportError`` -- and :func:`require` turns a later attempt to
use it into an error that says what to install. An ImportError raised *inside*
an installed library propagates unchanged.
"""
import importlib
import importlib.util

from ..compat import check_openmmlab, installed_line, pin, setup_command

#: extra requirements of a library, on both lines (mmseg imports them without requiring them)
_EXTRAS = {'mmseg': ' ftfy regex'}
#: OpenMMLab line -> library import name -> the pip requirement this project is tested with
#: (the versions are in s2aformer_mm.compat.LINES)
PINS = {line: {lib: pin(line, lib) + _EXTRAS.get(lib, '')
               for lib in ('mmpretrain', 'mmseg', 'mmdet')}
        for line in ('upstream', 'onedl')}
#: the installed line's pins (keys: the supported scopes)
SUPPORTED = PINS[installed_line()]
REGISTERED = []
MISSING = []


def register_all():
    for lib in SUPPORTED:
        if lib in REGISTERED or lib in MISSING:
            continue
        if importlib.util.find_spec(lib) is None:
            MISSING.append(lib)
            continue
        check_openmmlab(lib, SUPPORTED[lib])
        importlib.import_module(f'{__name__}.{lib}')
        REGISTERED.append(lib)


def require(lib: str) -> None:
    """Raise a clear ImportError if ``lib`` (an OpenMMLab scope) is unavailable."""
    if lib not in SUPPORTED:
        raise ValueError(f'Unknown OpenMMLab scope {lib!r}; s2aformer_mm supports '
                         f'{sorted(SUPPORTED)}.')
    register_all()
    if lib in MISSING:
        raise ImportError(
            f'{lib} is not installed, so S2AFormer is not registered in its MODELS registry. '
            f'Install it with: pip install {SUPPORTED[lib]}  '
            f'(or run {setup_command(installed_line())}).')
