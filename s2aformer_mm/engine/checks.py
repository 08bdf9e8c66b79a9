"""Up-front checks of ``tools/train.py`` / ``tools/test.py``: each refusal is one
:mod:`~s2aformer_mm.engine.errors` exception whose message names the problem and the
fix, raised before any process loads data or builds a model."""
import os
import os.path as osp
from typing import Iterator, List, Optional, Tuple

import torch
from mmengine.config import Config

from .distributed import CPU_CAPABLE_WRAPPERS
from .errors import DatasetNotFoundError, InputNotFoundError, UsageError

#: the repository (configs/, tools/), for error messages
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: scope -> argument of tools/data/generate_demo_data.py, for error messages
DEMO_KIND = {'mmpretrain': 'imagenet', 'mmseg': 'ade20k', 'mmdet': 'coco'}


def _dataset_paths(ds, where: str) -> Iterator[Tuple[str, str, bool]]:
    """Yield (config key, path, is_dir) for a dataset config, through wrappers."""
    if 'dataset' in ds:  # RepeatDataset, ClassBalancedDataset, ...
        yield from _dataset_paths(ds['dataset'], f'{where}.dataset')
        return
    if 'datasets' in ds:  # ConcatDataset
        for i, sub in enumerate(ds['datasets']):
            yield from _dataset_paths(sub, f'{where}.datasets[{i}]')
        return
    root = ds.get('data_root') or ''
    if root:
        yield f'{where}.data_root', root, True
    prefix = ds.get('data_prefix') or ''
    prefixes = prefix.items() if isinstance(prefix, dict) else [('', prefix)]
    if not prefix and ds.get('split'):  # mmpretrain ImageNet: data_prefix defaults to split
        prefixes = [('', ds['split'])]
    for key, path in prefixes:
        if path:
            name = f'{where}.data_prefix' + (f'.{key}' if key else '')
            yield name, osp.join(root, path), True
    if ds.get('ann_file'):
        yield f'{where}.ann_file', osp.join(root, ds['ann_file']), False


def _evaluator_ann_files(cfg: Config, loader: str) -> Iterator[Tuple[str, str]]:
    """Yield (config key, path) of the ``ann_file`` of each evaluator scoring ``loader``."""
    name = loader.replace('_dataloader', '_evaluator')
    evaluators = cfg.get(name)
    if isinstance(evaluators, dict):
        evaluators = {name: evaluators}
    elif isinstance(evaluators, (list, tuple)):
        evaluators = {f'{name}.{i}': ev for i, ev in enumerate(evaluators)}
    for key, evaluator in (evaluators or {}).items():
        if isinstance(evaluator, dict) and evaluator.get('ann_file'):
            yield f'{key}.ann_file', evaluator['ann_file']


def check_data_dirs(cfg: Config, loaders: List[str]) -> None:
    """Raise :class:`DatasetNotFoundError` before any worker starts if data is absent:
    the data sets of ``loaders`` and the annotation files of their evaluators."""
    kind = DEMO_KIND.get(cfg.get('default_scope'), '{imagenet,ade20k,coco}')
    for loader in loaders:
        if not cfg.get(loader):
            continue
        dataset_ann = None
        for key, path, is_dir in _dataset_paths(cfg[loader]['dataset'], f'{loader}.dataset'):
            if '://' in path:
                continue
            if key.endswith('.ann_file'):
                dataset_ann = path
            problem = None
            if is_dir and not osp.isdir(path):
                problem = 'does not exist'
            elif is_dir and not os.listdir(path):
                problem = 'is empty'
            elif not is_dir and not osp.isfile(path):
                problem = 'does not exist'
            if problem:
                root = cfg[loader]['dataset'].get('data_root', 'DATA_ROOT')
                raise DatasetNotFoundError(
                    f'Dataset {"directory" if is_dir else "file"} {path!r} ({key}) {problem}. '
                    f'Prepare the data set in the standard data/ layout (docs/datasets.md), or '
                    f'generate a small demo copy: python tools/data/generate_demo_data.py {kind} '
                    f'--root {root}, or point the config at your copy with --cfg-options '
                    f'{loader}.dataset.data_root=PATH.')
        for key, path in _evaluator_ann_files(cfg, loader):
            if '://' not in path and not osp.isfile(path):
                # e.g. mmdet's CocoMetric: its base config writes data_root + '...json'
                # when it is read, so overriding the data set's data_root misses it.
                raise DatasetNotFoundError(
                    f'Evaluator annotation file {path!r} ({key}) does not exist; it does not '
                    f'follow {loader}.dataset.data_root. Pass --cfg-options '
                    f'{key}={dataset_ann or "PATH"}.')


def check_pretrained(cfg: Config) -> None:
    """A missing backbone checkpoint fails here, before data loading starts."""
    init_cfg = cfg.get('model', {}).get('backbone', {}).get('init_cfg')
    if not (isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'):
        return
    path = init_cfg.get('checkpoint') or ''
    if '://' not in path and not osp.isfile(path):
        arch = str(cfg.model.backbone.get('arch')).lower()
        classifier = f'configs/mmpretrain/s2aformer_{arch}_4xb256_in1k.py'
        if not osp.isfile(osp.join(REPO, classifier)):  # e.g. an arch given as a dict
            classifier = 'the configs/mmpretrain config of this variant'
        # No ImageNet weights are published: the classifier has to be trained here.
        raise InputNotFoundError(
            f'Backbone checkpoint {path!r} (model.backbone.init_cfg.checkpoint) does not exist. '
            f'Train the ImageNet classifier first (python tools/train.py {classifier}; '
            f'docs/datasets.md) and pass its checkpoint with --cfg-options '
            f'model.backbone.init_cfg.checkpoint=PATH (or another checkpoint of this variant), '
            f'or train from scratch with --cfg-options model.backbone.init_cfg=None.')


def check_load_from(cfg: Config, resume: Optional[str]) -> None:
    """``--resume PATH`` / ``load_from`` must name an existing file (``--resume``
    without a path only picks files that exist)."""
    load_from = cfg.get('load_from')
    if not load_from or '://' in load_from or osp.isfile(osp.expanduser(load_from)):
        return
    if resume:
        raise InputNotFoundError(
            f'--resume {load_from!r}: no such checkpoint file. Pass an existing one, or '
            f'--resume without a path to resume from the latest checkpoint in the work dir '
            f'({cfg.work_dir}).')
    raise InputNotFoundError(
        f'load_from={load_from!r}: no such checkpoint file. Fix the path with --cfg-options '
        f'load_from=PATH, or start from the initial weights with load_from=None.')


def check_run_settings(cfg: Config, train: bool = True) -> None:
    """Refuse settings mmengine would ignore, or that cannot run on this machine."""
    wrapper = cfg.get('model_wrapper_cfg') or {}
    if (cfg.get('find_unused_parameters') is not None and wrapper
            and 'find_unused_parameters' not in wrapper):
        # mmengine reads the top-level key only when model_wrapper_cfg is None.
        raise UsageError(
            f'find_unused_parameters={cfg.find_unused_parameters} is ignored by mmengine when '
            f'model_wrapper_cfg is set (ours: configs/_base_/s2aformer_runtime.py). Set '
            f'model_wrapper_cfg.find_unused_parameters={cfg.find_unused_parameters} instead.')
    if torch.cuda.is_available():
        return
    if train and cfg.get('optim_wrapper', {}).get('type') in ('AmpOptimWrapper',
                                                              'mmengine.AmpOptimWrapper'):
        raise UsageError('optim_wrapper.type=AmpOptimWrapper needs CUDA, unavailable here. Use '
                         '--amp (fp16 on CUDA, bf16 on the CPU: MixedPrecisionOptimWrapper) or '
                         '--cfg-options optim_wrapper.type=OptimWrapper.')
    wrapper_type = wrapper.get('type', 'MMDistributedDataParallel')
    if cfg.get('launcher', 'none') != 'none' and wrapper_type not in CPU_CAPABLE_WRAPPERS:
        raise UsageError(
            f'model_wrapper_cfg.type={wrapper_type!r} needs GPUs (--launcher {cfg.launcher}, no '
            f'CUDA here). Set model_wrapper_cfg=dict(type="DeviceAwareDistributedDataParallel") '
            f'(our task configs inherit it from configs/_base_/s2aformer_runtime.py).')
