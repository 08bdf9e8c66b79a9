"""Training / testing plumbing shared by ``tools/train.py`` and ``tools/test.py``.

Importing this package registers, in mmengine's root registries (visible from
the ``mmpretrain`` / ``mmseg`` / ``mmdet`` scopes):

* ``CPUDistributedDataParallel`` (``MODEL_WRAPPERS``): DDP without
  ``device_ids`` and without SyncBN, for gloo runs on machines without CUDA;
* ``BF16AutocastOptimWrapper`` (``OPTIM_WRAPPERS``): ``--amp`` on CPU;
* ``DumpPredictions`` (``METRICS``): ``tools/test.py --out`` without logits;
* ``SafeCheckpointHook`` (``HOOKS``): saves before deleting, atomic writes;
* ``IterationSeedHook`` (``HOOKS``): random numbers per iteration (and per epoch), so
  resumed runs repeat;
* ``seed_worker_from_loader`` (``FUNCTIONS``): data-loader workers seeded per epoch.
"""
from .checkpointing import SafeCheckpointHook, find_resumable_checkpoint
from .distributed import (CPUDistributedDataParallel, destroy_distributed,
                          init_distributed)
from .errors import USER_ERRORS, DatasetNotFoundError, InputNotFoundError, UsageError
from .evaluation import DumpPredictions
from .launch import check_data_dirs, parse_test_args, parse_train_args, run_test, run_train
from .optim import BF16AutocastOptimWrapper
from .randomness import IterationSeedHook

__all__ = [
    'CPUDistributedDataParallel', 'BF16AutocastOptimWrapper', 'DumpPredictions',
    'SafeCheckpointHook', 'IterationSeedHook', 'find_resumable_checkpoint', 'USER_ERRORS',
    'DatasetNotFoundError', 'InputNotFoundError', 'UsageError', 'init_distributed',
    'destroy_distributed', 'check_data_dirs', 'parse_train_args', 'parse_test_args',
    'run_train', 'run_test'
]
