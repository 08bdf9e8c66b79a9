"""Runner parts named by the configs, and the plumbing of ``tools/train.py`` / ``tools/test.py``.

Importing this package registers, in mmengine's root registries (visible from
the ``mmpretrain`` / ``mmseg`` / ``mmdet`` scopes):

* ``SafeCheckpointHook`` (``HOOKS``): saves before deleting, atomic writes,
  newest-loadable resume;
* ``IterationSeedHook`` (``HOOKS``): random numbers per iteration (and per epoch), so
  resumed runs repeat;
* ``seed_worker_from_loader`` (``FUNCTIONS``): data-loader workers seeded per epoch;
* ``DeviceAwareDistributedDataParallel`` (``MODEL_WRAPPERS``): DDP on GPUs, and on
  CPUs without ``device_ids`` and SyncBN;
* ``MixedPrecisionOptimWrapper`` / ``BF16AutocastOptimWrapper`` (``OPTIM_WRAPPERS``):
  ``--amp``, fp16 on CUDA and bf16 on the CPU;
* ``DumpPredictions`` (``METRICS``): ``tools/test.py --out`` without logits.

The task configs name the first four (``configs/_base_/s2aformer_runtime.py``).
"""
from .checkpointing import SafeCheckpointHook, find_resumable_checkpoint
from .checks import check_data_dirs, check_load_from, check_pretrained, check_run_settings
from .compiling import compile_model, take_compile_option
from .config import load_config
from .distributed import (LAUNCHERS, DeviceAwareDistributedDataParallel, ProcessGroup,
                          destroy_distributed, init_distributed)
from .errors import USER_ERRORS, DatasetNotFoundError, InputNotFoundError, UsageError
from .evaluation import DumpPredictions, add_prediction_dump, report_metrics
from .optim import BF16AutocastOptimWrapper, MixedPrecisionOptimWrapper
from .randomness import IterationSeedHook, seed_worker_from_loader
from .tta import apply_tta
from .visualization import enable_visualization

__all__ = [
    'SafeCheckpointHook', 'find_resumable_checkpoint', 'check_data_dirs', 'check_load_from',
    'check_run_settings', 'check_pretrained', 'compile_model', 'take_compile_option', 'load_config',
    'LAUNCHERS', 'DeviceAwareDistributedDataParallel', 'ProcessGroup', 'destroy_distributed',
    'init_distributed', 'USER_ERRORS', 'DatasetNotFoundError', 'InputNotFoundError',
    'UsageError', 'DumpPredictions', 'add_prediction_dump', 'report_metrics',
    'BF16AutocastOptimWrapper', 'MixedPrecisionOptimWrapper', 'IterationSeedHook',
    'seed_worker_from_loader', 'apply_tta', 'enable_visualization'
]
