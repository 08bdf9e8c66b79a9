"""Random numbers in the model that a resumed run reproduces.

mmengine's checkpoints hold no random-generator state. After ``--resume`` the
process starts from the config's seed again, so drop path and dropout drew other
masks than the uninterrupted run would have: the resumed run was equal in
distribution but not bit for bit. Saving the state in the checkpoint would not be
enough: between the save and the next iteration, validation creates a data-loader
iterator, which draws from torch's generator.

:class:`IterationSeedHook` seeds torch's generators (CPU and every CUDA device) at
the start of every training iteration from ``(seed, iteration)``, so the model's
random numbers are a function of the iteration alone. numpy and ``random`` are
left alone: the data pipelines draw from them, in data-loader workers (seeded by
mmengine when they start) or, with ``num_workers=0``, in this process, where
mmengine's resume replays the skipped batches from the initial seed -- reseeding
them per iteration would break that replay.
"""
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def iteration_seed(seed: int, iteration: int) -> int:
    """A 63-bit seed per (run seed, iteration). The multiplier keeps run ``s`` at
    iteration ``i + 1`` apart from run ``s + 1`` at iteration ``i``."""
    return (seed * 1_000_003 + iteration) % 2 ** 63


@HOOKS.register_module()
class IterationSeedHook(Hook):
    """Seed torch at every training iteration from ``(runner.seed, runner.iter)``
    (the module docstring says why). ``runner.seed`` already includes the rank when
    ``randomness.diff_rank_seed`` is set."""

    priority = 'VERY_HIGH'   # before any hook that could draw

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        torch.manual_seed(iteration_seed(runner.seed, runner.iter))  # every device


def apply_iteration_seed(cfg) -> None:
    """Add :class:`IterationSeedHook` to ``custom_hooks`` unless it is there."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') in ('IterationSeedHook', 'mmengine.IterationSeedHook')
               for h in hooks):
        hooks.append(dict(type='IterationSeedHook'))
    cfg.custom_hooks = hooks
