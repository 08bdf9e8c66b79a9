"""Reading a config for ``tools/train.py`` / ``tools/test.py``: the file, the user's
``--cfg-options``, the library its ``default_scope`` names, and what the tools set
from their own arguments (work dir, launcher). Nothing machine-dependent is written
into the config: the copy a Runner saves in the work dir runs unchanged elsewhere."""
import logging
import os.path as osp
from typing import Optional, Tuple

from mmengine.config import Config, ConfigDict
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

from ..integrations import SUPPORTED, require
from .distributed import launch_rank
from .errors import InputNotFoundError, UsageError


def load_config(path: str, cfg_options: Optional[dict], launcher: str,
                work_dir: Optional[str]) -> Tuple[Config, str]:
    """Read ``path`` with ``cfg_options`` merged; return ``(cfg, default_scope)``.

    The work dir defaults to ``./work_dirs/<config name>`` as in the libraries' tools.
    """
    if not osp.isfile(path):
        raise InputNotFoundError(f'Config file {path!r} does not exist.')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED:
        raise UsageError(f'{path}: default_scope={scope!r}; it must name the library that '
                         f'runs the config, one of {sorted(SUPPORTED)}.')
    require(scope)
    init_default_scope(scope)
    ensure_custom_import(cfg)
    cfg.launcher = launcher
    quiet_other_ranks(launcher)
    cfg.work_dir = osp.abspath(work_dir or cfg.get('work_dir')
                               or osp.join('work_dirs', osp.splitext(osp.basename(path))[0]))
    return cfg, scope


def ensure_custom_import(cfg: Config) -> None:
    """Name ``s2aformer_mm`` in ``custom_imports``, keeping the config's own imports.

    The tools import it themselves, but the config copy the Runner writes to the work
    dir must import it to run under the libraries' own tools; a config that sets its
    own ``custom_imports`` replaces the imports list of our base configs.
    """
    imports = cfg.setdefault('custom_imports', ConfigDict(allow_failed_imports=False))
    names = imports.get('imports') or []
    names = [names] if isinstance(names, str) else list(names)
    if not any(n == 's2aformer_mm' or n.startswith('s2aformer_mm.') for n in names):
        imports['imports'] = names + ['s2aformer_mm']


def quiet_other_ranks(launcher: str) -> None:
    """Notes logged before the Runner exists go to mmengine's default logger, which
    cannot know the rank yet: on ranks other than 0 let only errors through (the
    Runner's own logger does the same), so an 8-process job prints each note once."""
    if launch_rank(launcher) != 0:
        for handler in MMLogger.get_current_instance().handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
