"""Where the configs of s2aformer-mm are, for downstream configs that inherit them.

A built package (wheel, ``pip install .``) carries ``configs/``, ``tools/`` and
``model-index.yml`` under ``s2aformer_mm/.mim/`` (OpenMMLab's layout; ``setup.py``
copies them in at build time); a checkout or an editable install has them at the
repository root. Both sit next to ``model-index.yml``, so the configs are found where
:func:`~s2aformer_mm.apis.model_index.model_index_path` finds the index (the packaged
copy first).

mmengine accepts only its own list of OpenMMLab packages before ``::`` in ``_base_``
(``mmengine.config.utils.MODULE2PACKAGE``), so ``'s2aformer_mm::mmseg/...'`` cannot
work; a downstream text config inherits by absolute path, which :func:`config_path`
gives (README, "Using the backbone")::

    _base_ = [__import__('s2aformer_mm.apis', fromlist=['config_path'])
              .config_path('mmseg/fpn_s2aformer_mini_ade20k.py')]
"""
import difflib
import os
import os.path as osp
from typing import List

from .model_index import model_index_path

__all__ = ['configs_dir', 'config_path']


def configs_dir() -> str:
    """Return the absolute path of the ``configs`` directory in use.

    Returns:
        str: ``.../s2aformer_mm/.mim/configs`` in an installed package,
        ``<checkout>/configs`` in a checkout (or editable install).

    Raises:
        FileNotFoundError: No model index (see :func:`model_index_path`), or no
            ``configs`` directory next to it.
    """
    path = osp.join(osp.dirname(model_index_path()), 'configs')
    if not osp.isdir(path):
        raise FileNotFoundError(f'{path} does not exist, although {model_index_path()} does: '
                                'the package was built without its configs.')
    return path


def _all_configs(root: str) -> List[str]:
    return sorted(osp.relpath(osp.join(d, f), root).replace(osp.sep, '/')
                  for d, _, files in os.walk(root)
                  for f in files if f.endswith('.py'))


def config_path(name: str) -> str:
    """Return the absolute path of one of our configs.

    Args:
        name (str): Path relative to ``configs/``, e.g.
            ``'mmseg/fpn_s2aformer_mini_ade20k.py'`` or
            ``'_base_/models/s2aformer_t.py'``; a leading ``'configs/'`` (as the
            metafiles write it) is accepted.

    Returns:
        str: Absolute path of the file (in ``s2aformer_mm/.mim/configs`` when the
        package is installed), usable in ``_base_`` and as the tools' CONFIG.

    Raises:
        ValueError: ``name`` is absolute or leaves ``configs/``.
        FileNotFoundError: No such config; the message names the closest ones.
    """
    rel = name.replace('\\', '/')
    if rel.startswith('configs/'):
        rel = rel[len('configs/'):]
    norm = osp.normpath(rel)
    if osp.isabs(rel) or norm == '..' or norm.startswith('..' + osp.sep):
        raise ValueError(f'config name {name!r} must be relative to configs/, e.g. '
                         "'mmseg/fpn_s2aformer_mini_ade20k.py'")
    root = configs_dir()
    path = osp.join(root, norm)
    if not osp.isfile(path):
        close = difflib.get_close_matches(rel, _all_configs(root), n=3, cutoff=0.5)
        raise FileNotFoundError(f'no config {rel!r} in {root}'
                                + (f'; did you mean {", ".join(close)}?' if close else ''))
    return path
