"""The OpenMMLab model index of s2aformer-mm and its registration with mmpretrain.

``model-index.yml`` (repository root) imports one metafile per task family
(``configs/{mmpretrain,mmseg,mmdet}/metafile.yml``) in the format of the libraries'
own ``.mim/model-index.yml``: name, config, measured parameters and FLOPs, and the
paper's results (no weights exist). Every path in it is relative to the file that
names it, so the same files work from a checkout and from a package that ships them
under ``s2aformer_mm/.mim/`` (OpenMMLab's layout for installed configs).

:func:`register_model_index` adds the classifiers to mmpretrain's ``ModelHub``, so
that ``mmpretrain.get_model('s2aformer-mini_4xb256_in1k')``, ``inference_model`` and
``ImageClassificationInferencer`` accept our model names. It is not called on
``import s2aformer_mm``:

* the package is imported by every config's ``custom_imports`` -- mmseg and mmdet
  runs and every data-loader worker included -- where mmpretrain's name lookup is
  never used; mmpretrain itself fills ``ModelHub`` lazily, on the first lookup;
* registering is a process-wide side effect that can fail (a missing index in a
  package built without it, a name another copy of this package already
  registered); an explicit call reports that as an error instead of an import that
  must either crash or swallow it.

Only the classifiers are registered: ``ModelHub`` builds every model in mmpretrain's
scope, so a segmentor or detector listed there would fail to build by name.
mmseg's and mmdet's inferencers look names up only in their own package's index;
for them, pass the config path as usual.
"""
import os.path as osp
from typing import List, Optional

import yaml

from ..integrations import require

__all__ = ['MMPRETRAIN_METAFILE', 'model_index_path', 'register_model_index']

#: The metafile of the classifiers, relative to the directory of model-index.yml.
MMPRETRAIN_METAFILE = 'configs/mmpretrain/metafile.yml'

_PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))  # .../s2aformer_mm
_CANDIDATES = (
    osp.join(_PACKAGE_DIR, '.mim', 'model-index.yml'),          # an installed package
    osp.join(osp.dirname(_PACKAGE_DIR), 'model-index.yml'),     # a checkout (or -e install)
)


def model_index_path() -> str:
    """Return the path of ``model-index.yml``.

    A copy packaged under ``s2aformer_mm/.mim/`` wins over the checkout's root copy,
    as in the OpenMMLab libraries, so an installed package never reads a stale
    checkout next to it.

    Returns:
        str: Absolute path of the model index.

    Raises:
        FileNotFoundError: Neither location holds the file (e.g. a package built
            without its configs); the message names both.
    """
    for path in _CANDIDATES:
        if osp.isfile(path):
            return path
    raise FileNotFoundError(
        'model-index.yml not found at ' + ' or '.join(_CANDIDATES) + '. It ships with the '
        'repository (and its configs); pass its path as register_model_index(index=PATH).')


def _model_names(metafile: str) -> List[str]:
    with open(metafile, encoding='utf-8') as f:
        models = (yaml.safe_load(f) or {}).get('Models') or []
    return [m['Name'].lower() for m in models]


def register_model_index(index: Optional[str] = None) -> List[str]:
    """Register the S2AFormer classifiers with mmpretrain's ``ModelHub``.

    Afterwards the names in ``configs/mmpretrain/metafile.yml`` (e.g.
    ``'s2aformer-mini_4xb256_in1k'``) work wherever mmpretrain takes a model name:
    ``get_model``, ``inference_model``, ``ImageClassificationInferencer``,
    ``list_models('s2aformer*')``. No weights are published, so ``get_model(name)``
    builds a randomly initialised model (``pretrained=True`` warns "Unable to find
    pre-defined checkpoint" and does the same; the inferencers default to it), and
    predictions are meaningless until you pass your own checkpoint as
    ``pretrained=PATH``.

    Calling it again is a no-op, so libraries and user code may both call it.

    Args:
        index (str, optional): Path of a ``model-index.yml`` whose directory holds
            ``configs/mmpretrain/metafile.yml``. Defaults to None:
            :func:`model_index_path`.

    Returns:
        List[str]: The registered model names (lower case, as ``ModelHub`` keys
        them).

    Raises:
        ImportError: mmpretrain is not installed.
        FileNotFoundError: No model index, or the index lacks the classifier
            metafile.
        ValueError: The index does not import that metafile, or one of its names
            is already registered from another file (e.g. a second copy of this
            package); nothing is registered then.
    """
    require('mmpretrain')
    from mmpretrain.apis import ModelHub

    index = osp.abspath(index if index is not None else model_index_path())
    if not osp.isfile(index):
        raise FileNotFoundError(f'model index {index} does not exist')
    root = osp.dirname(index)
    with open(index, encoding='utf-8') as f:
        imports = [osp.normpath(p) for p in (yaml.safe_load(f) or {}).get('Import') or []]
    if osp.normpath(MMPRETRAIN_METAFILE) not in imports:
        raise ValueError(f'{index} does not import {MMPRETRAIN_METAFILE} (Import: {imports}); '
                         'it is the metafile of the classifiers that mmpretrain can build.')
    metafile = osp.join(root, MMPRETRAIN_METAFILE)
    if not osp.isfile(metafile):
        raise FileNotFoundError(f'{metafile}, imported by {index}, does not exist')

    names = _model_names(metafile)
    # ModelHub.has does not trigger mmpretrain's own (lazy, ~1 s) registration.
    known = {n: osp.abspath(ModelHub._models_dict[n].filepath)
             for n in names if ModelHub.has(n)}
    if known:
        others = {n: f for n, f in known.items() if f != metafile}
        if others:
            raise ValueError(
                'mmpretrain ModelHub already has these S2AFormer names from another file: '
                + ', '.join(f'{n} ({f})' for n, f in sorted(others.items()))
                + f'; not registering {metafile}. Two copies of s2aformer_mm are in use?')
        if len(known) == len(names):
            return names
        raise ValueError(f'mmpretrain ModelHub holds only some of the models of {metafile} '
                         f'({sorted(known)}); it was changed after registration?')
    # Config paths in the metafiles are relative to the index's directory.
    ModelHub.register_model_index(metafile, config_prefix=root)
    return names
