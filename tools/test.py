"""Evaluate a checkpoint with mmpretrain, mmsegmentation or mmdetection.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR | preds.pkl]
                         [--show-dir DIR] [--show [--wait-time S]] [--tta] [--cfg-options k=v ...]
                         [--launcher {none,pytorch,slurm,mpi}]
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [args]

The metrics are printed as ``[s2aformer] test metrics: {json}`` and written to
``<work-dir>/test_metrics.json``.
"""
import argparse
import logging
import os
import os.path as osp

import torch
from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from s2aformer_mm.checkpoint import check_model_checkpoint
from s2aformer_mm.engine import (LAUNCHERS, USER_ERRORS, InputNotFoundError, ProcessGroup,
                                 add_prediction_dump, apply_tta, check_data_dirs,
                                 check_run_settings, enable_visualization, load_config,
                                 report_metrics)
from s2aformer_mm.runtime import tune_cpu_allocator


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) an S2AFormer model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='logs and metrics (default: work_dirs/<config>)')
    parser.add_argument('--out', help="as the library's own tools/test.py: mmseg, a directory "
                        'for one prediction PNG per image; mmdet / mmpretrain, a .pkl file '
                        'for the pickled predictions')
    parser.add_argument('--show-dir', help='write prediction pictures to this directory')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds each picture is shown with --show')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation: the config's tta_model / tta_pipeline "
                             '(mmseg ADE20K: 6 scales x flip; mmdet: flip, boxes only, not '
                             'Mask R-CNN); for mmpretrain, and for mmdet configs without them, '
                             "flip, as the library's own tools/test.py does")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys (key=value, lists as key="[a,b]")')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--check-only', action='store_true',
                        help='run the up-front checks (config, data, checkpoint, options) and '
                        'exit; tools/dist_test.sh does this once before starting the processes')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg, scope = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    check_data_dirs(cfg, ['test_dataloader'])
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise InputNotFoundError(f'Checkpoint {args.checkpoint!r} does not exist.')
    cfg.load_from = args.checkpoint
    draw = bool(args.show or args.show_dir)
    if args.tta:
        apply_tta(cfg, scope, draw=draw)
    if draw:
        show_dir = osp.abspath(args.show_dir) if args.show_dir else None
        enable_visualization(cfg, scope, show_dir, args.show, args.wait_time)
    if args.out:
        add_prediction_dump(cfg, scope, args.out)
    check_run_settings(cfg, train=False)
    if args.check_only:
        return {}
    if not torch.cuda.is_available():  # glibc keeps activation blocks (s2aformer_mm/runtime.py)
        print_log(tune_cpu_allocator('inference'), logger='current')
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend')
    with ProcessGroup(cfg.launcher, backend) as group:
        runner = group.runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
        if draw and runner.world_size > 1:
            print_log(f"--show/--show-dir with {runner.world_size} processes: the libraries' "
                      "visualizers draw on rank 0 only, so pictures cover rank 0's share of "
                      f'the test set (about 1/{runner.world_size}). Run tools/test.py in one '
                      'process to draw every image.', logger='current', level=logging.WARNING)
        # mmengine's load_from is non-strict: a checkpoint of another variant would be
        # evaluated with a warning only. Check keys and shapes first; the Runner then loads
        # it as usual (after before_run, which e.g. EMAHook needs).
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_model_checkpoint(model.module if isinstance(model, BaseTTAModel) else model,
                               args.checkpoint)
        metrics = runner.test()
    return report_metrics(metrics, cfg.work_dir, args.show_dir) if runner.rank == 0 else metrics


if __name__ == '__main__':
    try:
        main()
    except USER_ERRORS as e:
        raise SystemExit(f'[s2aformer] ERROR: {e}') from None
