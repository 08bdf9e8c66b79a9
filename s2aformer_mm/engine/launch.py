"""One code path for training and testing with mmpretrain, mmseg and mmdet.

The config's ``default_scope`` selects the library; everything else
(distributed set-up, CPU fall-backs, ``--amp``, ``--show-dir``, data checks) is
the same for all three. ``tools/train.py`` and ``tools/test.py`` only call
:func:`run_train` / :func:`run_test`.
"""
import argparse
import copy
import glob
import json
import logging
import os
import os.path as osp
from typing import Iterator, List, Optional, Tuple

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import RUNNERS, init_default_scope
from mmengine.runner import Runner

from ..checkpoint import check_model_checkpoint
from ..integrations import SUPPORTED, require
from ..runtime import tune_cpu_allocator
from .checkpointing import (apply_checkpoint_defaults, find_resumable_checkpoint,
                            remove_stale_temp_files)
from .compiling import compile_model, take_compile_option
from .distributed import LAUNCHERS, destroy_distributed, init_distributed, launch_rank
from .errors import DatasetNotFoundError, InputNotFoundError, UsageError
from .randomness import apply_seeding
from .tta import apply_tta

#: the repository (configs/, tools/), for error messages
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: scope -> argument of tools/data/generate_demo_data.py, for error messages
DEMO_KIND = {'mmpretrain': 'imagenet', 'mmseg': 'ade20k', 'mmdet': 'coco'}
#: top-level config key listing the options (dotted keys) the tools set only because CUDA
#: was missing. It travels in the work dir's config copy, so that the copy, run again on
#: CUDA, gets the GPU settings; the Runner ignores keys it does not know.
CPU_DEFAULTS = '_s2aformer_cpu_defaults'


# --------------------------------------------------------------------------- arguments
def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='directory for logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config keys, e.g. train_dataloader.batch_size=4 '
        'model.backbone.init_cfg=None (key=value, lists as key="[a,b]")')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher (tools/dist_*.sh use pytorch, tools/slurm_*.sh slurm)')
    # torch.distributed.launch passes --local-rank; torchrun sets $LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_train_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train an S2AFormer model (mmpretrain / mmseg / mmdet, chosen by the '
        "config's default_scope)")
    parser.add_argument('config', help='train config file path')
    _common_args(parser)
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the checkpoint PATH; without PATH, from the latest checkpoint '
        'in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: fp16 AmpOptimWrapper on CUDA, bf16 autocast on CPU')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale lr linearly by total batch / auto_scale_lr.base_batch_size')
    parser.add_argument('--no-validate', action='store_true',
                        help='train without validation (no val data needed)')
    return parser.parse_args(argv)


def parse_test_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (evaluate) an S2AFormer model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    _common_args(parser)
    parser.add_argument('--out', help='dump the raw predictions to this .pkl file')
    parser.add_argument('--show-dir', help='write prediction pictures to this directory')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds each picture is shown with --show')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation: the config's tta_model / tta_pipeline "
                             '(mmseg ADE20K: 6 scales x flip; mmdet: flip, boxes only, not '
                             'Mask R-CNN); for mmpretrain, and for mmdet configs without them, '
                             "flip, as the library's own tools/test.py does")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- config
def _set_cpu_defaults(cfg: Config, keys: List[str]) -> None:
    """Record ``keys`` as the CPU defaults of ``cfg`` (none: drop the key)."""
    if keys:
        cfg[CPU_DEFAULTS] = keys
    else:
        cfg.pop(CPU_DEFAULTS, None)


def load_config(args: argparse.Namespace) -> Tuple[Config, str]:
    """Read the config, apply ``--cfg-options`` / work dir / launcher; return (cfg, scope)."""
    if not osp.isfile(args.config):
        raise InputNotFoundError(f'Config file {args.config!r} does not exist.')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
        if cfg.get(CPU_DEFAULTS):  # an option given now is the user's, not a CPU default
            _set_cpu_defaults(cfg, [k for k in cfg[CPU_DEFAULTS] if k not in args.cfg_options])
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED:
        raise UsageError(f'{args.config}: default_scope={scope!r}; it must name the library that '
                         f'runs the config, one of {sorted(SUPPORTED)}.')
    require(scope)
    init_default_scope(scope)
    ensure_custom_import(cfg)
    cfg.launcher = args.launcher
    quiet_other_ranks(args.launcher)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg.work_dir = osp.abspath(
        args.work_dir or cfg.get('work_dir')
        or osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0]))
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


def _undo_cpu_ddp(cfg: Config) -> None:
    """On CUDA, map the CPU DDP set-up of a config copy written on the CPU back:
    :class:`CPUDistributedDataParallel` (only the tools select it) becomes mmengine's
    wrapper, and the gloo backend that came with it nccl."""
    wrapper = cfg.get('model_wrapper_cfg')
    if not isinstance(wrapper, dict) or wrapper.get('type') != 'CPUDistributedDataParallel':
        return
    wrapper['type'] = 'MMDistributedDataParallel'
    # CPUDistributedDataParallel's default, and that of mmengine's default wrapper
    wrapper.setdefault('broadcast_buffers', False)
    print_log('model_wrapper_cfg.type=CPUDistributedDataParallel (written by the tools on a '
              'machine without CUDA): using MMDistributedDataParallel on CUDA.',
              logger='current', level=logging.WARNING)
    dist_cfg = cfg.get('env_cfg', {}).get('dist_cfg', {})
    if dist_cfg.get('backend') == 'gloo':
        dist_cfg['backend'] = 'nccl'
        print_log('env_cfg.dist_cfg.backend=gloo came with CPUDistributedDataParallel (the '
                  'CPU fall-back): using nccl on CUDA.', logger='current', level=logging.WARNING)


def setup_distributed(cfg: Config) -> None:
    """Initialise the process group before the Runner exists (it then skips init_dist)."""
    if torch.cuda.is_available():
        _undo_cpu_ddp(cfg)
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend')
    if not torch.cuda.is_available() and backend == 'nccl':
        backend = None  # OpenMMLab defaults name nccl; fall back to gloo without CUDA
    backend = init_distributed(cfg.launcher, backend)
    if cfg.launcher == 'none':
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    env_cfg.setdefault('dist_cfg', ConfigDict())['backend'] = backend
    if not torch.cuda.is_available():
        wrapper = cfg.get('model_wrapper_cfg') or ConfigDict()
        if wrapper.get('type', 'MMDistributedDataParallel') not in (
                'MMDistributedDataParallel', 'CPUDistributedDataParallel'):
            raise UsageError(f'model_wrapper_cfg.type={wrapper["type"]!r} is not supported on CPU '
                             'by the tools; remove it or use a GPU.')
        wrapper['type'] = 'CPUDistributedDataParallel'
        # Runner only reads the top-level flag when model_wrapper_cfg is None.
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper
    rank, world = get_dist_info()
    print(f'[s2aformer] rank {rank}/{world}: process group ready (backend {backend}, '
          f'{"cuda" if torch.cuda.is_available() else "cpu"})', flush=True)


def apply_cpu_memory_defaults(cfg: Config) -> None:
    """Gradient checkpointing for S2AFormer when training without CUDA.

    The paper's dense recipes (8 images of 512x512 per process) take ~14 GB of RAM
    per training process on the CPU (7.5 GB with checkpointing), so two processes
    do not fit a 24 GB machine. ``with_cp`` gives identical outputs and gradients
    (tests/test_backbone.py), only memory and time change. A config or
    ``--cfg-options`` that sets ``model.backbone.with_cp`` is left alone. The default is
    recorded in ``_s2aformer_cpu_defaults``, and undone on CUDA (where the recipes fit
    without it), so the work dir's config copy trains on a GPU without checkpointing.
    """
    backbone = cfg.get('model', {}).get('backbone')
    if (not isinstance(backbone, dict)
            or not str(backbone.get('type', '')).endswith('S2AFormer')):
        return
    key, recorded = 'model.backbone.with_cp', list(cfg.get(CPU_DEFAULTS) or [])
    if torch.cuda.is_available():
        if key in recorded:
            backbone.pop('with_cp', None)
            _set_cpu_defaults(cfg, [k for k in recorded if k != key])
            print_log(f'{key}=True was the CPU memory default of the tools (listed in '
                      f'{CPU_DEFAULTS}): training on CUDA without gradient checkpointing. '
                      f'Keep it with --cfg-options {key}=True.', logger='current')
        return
    if 'with_cp' in backbone:
        return
    backbone['with_cp'] = True
    _set_cpu_defaults(cfg, recorded + [key])
    print_log('Training on the CPU: gradient checkpointing enabled in the S2AFormer backbone '
              '(same results, about half the activation memory). Disable it with '
              '--cfg-options model.backbone.with_cp=False.', logger='current')


def apply_cpu_runtime(use: str) -> None:
    """Without CUDA, let glibc keep freed activation blocks for reuse
    (:mod:`s2aformer_mm.runtime`, where the measured gains and memory cost are;
    opt out with S2A_DEFAULT_ALLOCATOR=1)."""
    if not torch.cuda.is_available():
        print_log(tune_cpu_allocator(use), logger='current')


def apply_amp(cfg: Config, enable: bool) -> None:
    """fp16 ``AmpOptimWrapper`` on CUDA, :class:`BF16AutocastOptimWrapper` on CPU.

    Each maps to the other where it cannot work: a CPU config copy names the bf16
    wrapper, whose CPU autocast would leave CUDA training in fp32.
    """
    wrapper = cfg.optim_wrapper
    if torch.cuda.is_available():
        if wrapper.get('type') == 'BF16AutocastOptimWrapper':
            print_log("optim_wrapper is BF16AutocastOptimWrapper (the tools' AMP on the CPU), "
                      'whose autocast covers CPU operations only; using fp16 AmpOptimWrapper on '
                      'CUDA instead.', logger='current', level=logging.WARNING)
            enable = True
        if enable and wrapper.get('type') != 'AmpOptimWrapper':
            wrapper.type = 'AmpOptimWrapper'
            wrapper.setdefault('loss_scale', 'dynamic')
        return
    if enable or wrapper.get('type') == 'AmpOptimWrapper':
        if not enable:
            print_log('optim_wrapper is AmpOptimWrapper, which needs CUDA; using bf16 autocast '
                      'on the CPU instead (BF16AutocastOptimWrapper).', logger='current',
                      level=logging.WARNING)
        wrapper.type = 'BF16AutocastOptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)


# --------------------------------------------------------------------------- checks
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


# --------------------------------------------------------------------------- visualisation
def enable_visualization(cfg: Config, scope: str, show_dir: Optional[str], show: bool,
                         wait_time: float) -> None:
    """Turn on the library's visualisation hook so test predictions are drawn."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise UsageError('--show/--show-dir need default_hooks.visualization in the config '
                         '(VisualizationHook / SegVisualizationHook / DetVisualizationHook).')
    hook.update(show=show, wait_time=wait_time)
    if scope == 'mmpretrain':  # VisualizationHook(enable, out_dir)
        hook.update(enable=True, interval=1, out_dir=show_dir)
    elif scope == 'mmseg':  # SegVisualizationHook draws through the visualizer's backends
        hook.update(draw=True, interval=1)
        if show_dir:
            cfg.visualizer['save_dir'] = show_dir
        # The hook reads runner.iter, which builds the train loop and its data set even
        # in test mode: give it the test data so testing never needs the training split.
        cfg.train_dataloader = copy.deepcopy(cfg.test_dataloader)
    else:  # mmdet DetVisualizationHook(test_out_dir)
        hook.update(draw=True, interval=1, test_out_dir=show_dir)


# --------------------------------------------------------------------------- entry points
def _build_runner(cfg: Config) -> Runner:
    return RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)


def run_train(args: argparse.Namespace) -> Runner:
    cfg, scope = load_config(args)
    apply_cpu_runtime('train')
    if args.no_validate:  # mmengine builds a val loop only when all three are set
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    check_data_dirs(cfg, ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else []))
    check_pretrained(cfg)
    if args.resume == 'auto':
        # Not mmengine's find_latest_checkpoint: it trusts an empty or stale pointer.
        remove_stale_temp_files(cfg.work_dir)
        latest = find_resumable_checkpoint(cfg.work_dir)
        if latest is None:
            print_log(f'--resume: no checkpoint in {cfg.work_dir}; starting at iteration 0.',
                      logger='current', level=30)
        cfg.resume, cfg.load_from = latest is not None, latest
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    load_from = cfg.get('load_from')
    if load_from and '://' not in load_from and not osp.isfile(osp.expanduser(load_from)):
        if args.resume:  # a PATH: --resume alone only picks files that exist
            raise InputNotFoundError(
                f'--resume {load_from!r}: no such checkpoint file. Pass an existing one, or '
                f'--resume without a path to resume from the latest checkpoint in the work dir '
                f'({cfg.work_dir}).')
        raise InputNotFoundError(
            f'load_from={load_from!r}: no such checkpoint file. Fix the path with --cfg-options '
            f'load_from=PATH, or start from the initial weights with load_from=None.')
    apply_checkpoint_defaults(cfg)
    apply_seeding(cfg)
    apply_cpu_memory_defaults(cfg)
    apply_amp(cfg, args.amp)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise UsageError(f'--auto-scale-lr: {args.config} has no auto_scale_lr.base_batch_size '
                             f'(the total batch its lr is tuned for).')
        cfg.auto_scale_lr.enable = True
    compile_cfg = cfg.get('compile')
    compile_options = take_compile_option(cfg)
    setup_distributed(cfg)
    runner = None
    try:
        runner = _build_runner(cfg)
        if compile_cfg is not None:
            # The runner dumped the config without it; the copy in work_dir must train
            # the same way when run again. Only for the dump: Runner.train() reads
            # runner.cfg.compile and would compile the optimizer step after all.
            runner.cfg.compile = compile_cfg
            try:
                runner.dump_config()
            finally:
                runner.cfg.pop('compile')
        compile_model(runner, compile_options)
        runner.train()
    except BaseException:
        destroy_distributed(runner, barrier=False)
        raise
    rank, world = get_dist_info()
    print(f'[s2aformer] rank {rank}/{world}: training finished at iteration {runner.iter} '
          f'(epoch {runner.epoch}); work dir {cfg.work_dir}', flush=True)
    destroy_distributed(runner)
    return runner


def run_test(args: argparse.Namespace) -> dict:
    cfg, scope = load_config(args)
    apply_cpu_runtime('inference')
    check_data_dirs(cfg, ['test_dataloader'])
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise InputNotFoundError(f'Checkpoint {args.checkpoint!r} does not exist.')
    cfg.load_from = args.checkpoint
    if args.tta:
        apply_tta(cfg, scope, draw=bool(args.show or args.show_dir))
    if args.show or args.show_dir:
        show_dir = osp.abspath(args.show_dir) if args.show_dir else None
        enable_visualization(cfg, scope, show_dir, args.show, args.wait_time)
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise UsageError(f'--out {args.out!r}: the predictions are pickled; use a .pkl name.')
        dump = dict(type='DumpDetResults' if scope == 'mmdet' else 'mmengine.DumpPredictions',
                    out_file_path=args.out)
        evaluators = cfg.test_evaluator
        cfg.test_evaluator = (list(evaluators) if isinstance(evaluators, (list, tuple))
                              else [evaluators]) + [dump]
    setup_distributed(cfg)
    world = get_dist_info()[1]
    if (args.show or args.show_dir) and world > 1:
        print_log(f"--show/--show-dir with {world} processes: the libraries' visualizers draw "
                  f"on rank 0 only, so pictures cover rank 0's share of the test set (about "
                  f'1/{world}). Run tools/test.py in one process to draw every image.',
                  logger='current', level=logging.WARNING)
    runner = None
    try:
        runner = _build_runner(cfg)
        # mmengine's load_from is non-strict: a checkpoint of another variant would be
        # evaluated with a warning only. Check keys and shapes first; the Runner then loads
        # it as usual (after before_run, which e.g. EMAHook needs).
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if isinstance(model, BaseTTAModel):  # mmengine loads into the wrapped model
            model = model.module
        check_model_checkpoint(model, args.checkpoint)
        metrics = runner.test()
    except BaseException:
        destroy_distributed(runner, barrier=False)
        raise
    rank = get_dist_info()[0]
    destroy_distributed(runner)
    metrics = {k: (float(v) if isinstance(v, (int, float)) or hasattr(v, 'item') else v)
               for k, v in metrics.items()}
    if rank == 0:
        with open(osp.join(cfg.work_dir, 'test_metrics.json'), 'w') as f:
            json.dump(metrics, f, indent=1, default=str)
        print(f'[s2aformer] test metrics: {json.dumps(metrics, default=str)}', flush=True)
        if args.show_dir:
            pics = [p for p in glob.glob(osp.join(osp.abspath(args.show_dir), '**', '*'),
                                         recursive=True)
                    if p.lower().endswith(('.png', '.jpg', '.jpeg'))]
            dirs = sorted({osp.dirname(p) for p in pics})
            print(f'[s2aformer] {len(pics)} prediction pictures written to '
                  f'{", ".join(dirs) or args.show_dir}', flush=True)
    return metrics


def save_initial_checkpoint(config: str, out: str, cfg_options: Optional[dict] = None,
                            seed: int = 0) -> str:
    """Save the weights a training run starts from (``init_weights``), e.g. to
    evaluate the untrained model with ``tools/test.py`` as a baseline."""
    from mmengine.registry import MODELS
    from mmengine.runner import set_random_seed

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    require(cfg.default_scope)
    init_default_scope(cfg.default_scope)
    set_random_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    torch.save(dict(meta=dict(iter=0, epoch=0, seed=seed), state_dict=model.state_dict()), out)
    return out
