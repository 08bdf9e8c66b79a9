"""Random numbers that a resumed run reproduces, and fresh augmentation every epoch.

mmengine's checkpoints hold no random-generator state. After ``--resume`` the
process starts from the config's seed again, so drop path and dropout drew other
masks than the uninterrupted run would have: the resumed run was equal in
distribution but not bit for bit. Saving the state in the checkpoint would not be
enough: between the save and the next iteration, validation creates a data-loader
iterator, which draws from torch's generator.

:class:`IterationSeedHook` seeds torch's generators (CPU and every CUDA device) at
the start of every training iteration from ``(seed, iteration)``, so the model's
random numbers are a function of the iteration alone. numpy and ``random`` are
not reseeded per iteration: the data pipelines draw from them, in data-loader
workers or, with ``num_workers=0``, in this process, where mmengine's resume of an
iteration-based run replays the skipped batches from the initial seed -- reseeding
them per iteration would break that replay. (The maintained line, onedl-mmengine
0.10.12, positions the sampler instead of replaying; the hook then replays the
batches as mmengine 0.10.7 does: :func:`replay_skipped_batches`.)

Epoch-based runs (classification, detection) resume at an epoch boundary without a
replay, and their augmentation had two faults under mmengine's default
``worker_init_fn``, which seeds a worker from ``(seed, rank, worker id)`` only:

* non-persistent workers (mmpretrain's ImageNet loaders) start every epoch from the
  same seeds, so epoch after epoch the k-th sample of a worker gets the same crop,
  flip and RandAugment draws (only which image sits at position k changes);
* persistent workers (mmdet's COCO loaders) continue one stream across epochs, which
  a resumed run restarts from the beginning.

So in epoch-based runs the hook also seeds torch, numpy and ``random`` at the start
of every epoch from ``(seed, epoch)``, and the epoch-based task configs start the
training loader's workers every epoch (``persistent_workers=False``) with
:func:`seed_worker_from_loader`, which seeds them from the loader's per-epoch seed.
Every epoch's augmentation is then a function of ``(seed, epoch, rank)``: different
in each epoch and the same after a resume.

Both are named in the task configs (``configs/_base_/s2aformer_runtime.py``), so
every launcher that reads them resumes bit for bit.
"""
import os
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import FUNCTIONS, HOOKS
from mmengine.runner import EpochBasedTrainLoop

_EPOCH_OFFSET = 2 ** 40   # keeps epoch seeds apart from iteration seeds of the same run


def iteration_seed(seed: int, iteration: int) -> int:
    """A 63-bit seed per (run seed, iteration). The multiplier keeps run ``s`` at
    iteration ``i + 1`` apart from run ``s + 1`` at iteration ``i``."""
    return (seed * 1_000_003 + iteration) % 2 ** 63


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed per (run seed, epoch), never equal to an :func:`iteration_seed`
    of the same run below 2**40 iterations."""
    return iteration_seed(seed, _EPOCH_OFFSET + epoch)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)          # every device
    np.random.seed(seed % 2 ** 32)   # numpy takes 32 bits
    random.seed(seed)


@HOOKS.register_module()
class IterationSeedHook(Hook):
    """Seed torch at every training iteration from ``(runner.seed, runner.iter)``, and
    in epoch-based loops torch, numpy and ``random`` at every epoch from
    ``(runner.seed, runner.epoch)`` (the module docstring says why). ``runner.seed``
    already includes the rank when ``randomness.diff_rank_seed`` is set."""

    priority = 'VERY_HIGH'   # before any hook that could draw

    def before_train_epoch(self, runner) -> None:
        # Before the epoch's loader iterator exists: its workers' seeds derive from this.
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            _seed_all(epoch_seed(runner.seed, runner.epoch))
        elif runner.iter > 0:   # a resumed iteration-based run, before it skips the batches
            replay_skipped_batches(runner.train_loop, runner.iter)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        torch.manual_seed(iteration_seed(runner.seed, runner.iter))  # every device


def replay_skipped_batches(loop, iters: int) -> None:
    """Draw the ``iters`` batches a resumed iteration-based run skips through the data
    pipeline (and its workers), where the mmengine in use would not.

    mmengine 0.10.7 skips them by drawing them (``next`` on the loop's iterator), so the
    pipeline's numpy / ``random`` streams -- in this process or in each loader worker --
    continue where the uninterrupted run's were. onedl-mmengine 0.10.12 by default
    (``IterBasedTrainLoop.fast_forward_on_resume=False``) instead positions a sampler that has
    ``skip`` without loading anything and starts the workers afresh, so the resumed run drew
    other crops and flips. On that line this draws the batches through the loop's iterator
    and turns the loop's own skip off (``fast_forward_on_resume=True``, whose warning then
    refers to the skip it no longer does). Loading the skipped batches costs what it costs on
    mmengine 0.10.7. A no-op on mmengine 0.10.7 (its iterator has no ``skip_iter``) and
    where a config sets ``fast_forward_on_resume=True`` (the user chose speed over an exact
    resume).
    """
    iterator = getattr(loop, 'dataloader_iterator', None)
    if not hasattr(iterator, 'skip_iter') or getattr(loop, 'fast_forward_on_resume', True):
        return
    print_log(f'resume: drawing the {iters} trained batches through the data pipeline, as '
              'mmengine 0.10.7 does, so that augmentation continues as in the uninterrupted '
              'run; the loop\'s sampler-level skip is turned off for this', logger='current')
    loop.fast_forward_on_resume = True
    for _ in range(iters):
        next(iterator)


@FUNCTIONS.register_module()
def seed_worker_from_loader(worker_id: int) -> None:
    """``worker_init_fn`` that seeds numpy, ``random`` and torch in a data-loader worker
    from the loader's own per-iterator seed (``torch.initial_seed()`` in the worker is
    that seed plus ``worker_id``, drawn from the main process's generator when the
    iterator starts) and the distributed rank. mmengine's default ignores the former."""
    rank = (torch.distributed.get_rank() if torch.distributed.is_available()
            and torch.distributed.is_initialized() else int(os.environ.get('RANK', 0)))
    _seed_all(iteration_seed(torch.initial_seed(), rank))
