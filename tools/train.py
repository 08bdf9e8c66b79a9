"""Train with mmpretrain, mmsegmentation or mmdetection (the config's default_scope).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH]] [--amp] [--auto-scale-lr]
                          [--no-validate] [--cfg-options k=v ...]
                          [--launcher {none,pytorch,slurm,mpi}]
    bash tools/dist_train.sh CONFIG NUM_PROCS [args]   # torchrun; gloo without CUDA

What makes a run safe to kill and exact to resume is in the configs
(configs/_base_/s2aformer_runtime.py), so the libraries' own tools/train.py gets it too.
This tool adds one-line errors for bad input and the choices that depend on the machine
(process-group backend, CPU allocator), which it logs and never writes into the config.
"""
import argparse
import os
from typing import Optional

import torch

from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from s2aformer_mm.engine import (LAUNCHERS, USER_ERRORS, ProcessGroup, UsageError,
                                 check_data_dirs, check_load_from, check_pretrained,
                                 check_run_settings, compile_model, load_config,
                                 take_compile_option)
from s2aformer_mm.runtime import tune_cpu_allocator


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train an S2AFormer model (mmpretrain / mmseg '
                                     "/ mmdet, chosen by the config's default_scope)")
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='logs and checkpoints (default: work_dirs/<config>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from checkpoint PATH; without PATH, from the newest '
                        'checkpoint in the work dir that loads')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: fp16 on CUDA, bf16 on the CPU')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale lr linearly by total batch / auto_scale_lr.base_batch_size')
    parser.add_argument('--no-validate', action='store_true',
                        help='train without validation (no val data needed)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_dataloader.batch_size=4 '
                        'model.backbone.init_cfg=None (lists as key="[a,b]")')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--check-only', action='store_true',
                        help='run the up-front checks (config, data, files, options) and exit; '
                        'tools/dist_train.sh does this once before starting the processes')
    # torch.distributed.launch passes --local-rank; torchrun sets $LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None) -> Optional[Runner]:
    args = parse_args(argv)
    cfg, _ = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    # Command-line overrides, saved with the config as the libraries' tools do.
    if args.no_validate:  # mmengine builds a val loop only when all three are set
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.resume:  # 'auto': SafeCheckpointHook picks the newest loadable checkpoint
        cfg.resume, cfg.load_from = True, None if args.resume == 'auto' else args.resume
    if args.amp:
        cfg.optim_wrapper.type = 'MixedPrecisionOptimWrapper'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise UsageError(f'--auto-scale-lr: {args.config} has no '
                             'auto_scale_lr.base_batch_size (the total batch its lr is for).')
        cfg.auto_scale_lr.enable = True
    # Up-front checks: one-line errors before any data is loaded.
    check_data_dirs(cfg, ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else []))
    check_pretrained(cfg)
    check_load_from(cfg, args.resume)
    check_run_settings(cfg)
    if args.check_only:
        return None
    if not torch.cuda.is_available():  # glibc keeps activation blocks (s2aformer_mm/runtime.py)
        print_log(tune_cpu_allocator('train'), logger='current')
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend')
    with ProcessGroup(cfg.launcher, backend) as group:
        runner = group.runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
        compile_model(runner, take_compile_option(runner.cfg))
        runner.train()
        print(f'[s2aformer] rank {runner.rank}/{runner.world_size}: training finished at '
              f'iteration {runner.iter} (epoch {runner.epoch}); work dir {cfg.work_dir}',
              flush=True)
    return runner


if __name__ == '__main__':
    try:
        main()
    except USER_ERRORS as e:
        raise SystemExit(f'[s2aformer] ERROR: {e}') from None
