"""Per-epoch seeds of epoch-based loaders (s2aformer_mm/engine/randomness.py and the
configs' ``s2aformer_epoch_loader``); resumed runs are in tests/e2e/test_reliability.py."""
import copy
import random

import numpy as np
import torch
from mmengine.config import Config

from s2aformer_mm.testing import REPO

class _RandomDraws(torch.utils.data.Dataset):
    """Each sample is (index, a number drawn in the worker): an augmentation's draw."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return i, float(np.random.rand()), random.random(), float(torch.rand(()))


def test_epoch_based_loaders_draw_new_augmentations_every_epoch():
    """mmengine's worker_init_fn seeds non-persistent workers (mmpretrain's ImageNet
    loaders) the same in every epoch: the k-th sample of each epoch got the same draws.
    With the tools' settings each epoch draws anew, and a loader started at epoch 1 (a
    resumed run) draws what the uninterrupted one drew in epoch 1."""
    from types import SimpleNamespace

    from mmengine.registry import DATASETS, DefaultScope
    from mmengine.runner import EpochBasedTrainLoop, Runner

    from s2aformer_mm.engine.randomness import IterationSeedHook
    DATASETS.register_module('_RandomDraws', module=_RandomDraws, force=True)
    loader = dict(batch_size=1, num_workers=2, persistent_workers=True,
                  dataset=dict(type='_RandomDraws'), collate_fn=dict(type='default_collate'),
                  sampler=dict(type='DefaultSampler', shuffle=True))
    cfg = Config(dict(train_cfg=dict(by_epoch=True, max_epochs=2), train_dataloader=loader))
    stock = copy.deepcopy(cfg.train_dataloader)
    stock.persistent_workers = False  # as mmpretrain's ImageNet base config
    runtime = Config.fromfile(REPO / 'configs/_base_/s2aformer_runtime.py')
    cfg.train_dataloader.update(runtime.s2aformer_epoch_loader)  # what the task configs do
    hook = IterationSeedHook()
    runner = SimpleNamespace(seed=0, train_loop=EpochBasedTrainLoop.__new__(EpochBasedTrainLoop))

    def epochs(loader_cfg, first, last):
        loader = Runner.build_dataloader(copy.deepcopy(loader_cfg), seed=0)
        draws = []
        for runner.epoch in range(first, last + 1):
            loader.sampler.set_epoch(runner.epoch)
            hook.before_train_epoch(runner)   # what the runner calls before iterating
            draws.append([tuple(float(v) for v in b[1:]) for b in loader])
        return draws

    with DefaultScope.overwrite_default_scope('mmpretrain'):
        stock_draws = epochs(stock, 0, 1)
        draws = epochs(cfg.train_dataloader, 0, 1)
        resumed = epochs(cfg.train_dataloader, 1, 1)
    assert stock_draws[0] == stock_draws[1]  # why: mmengine repeats the draws per epoch
    assert len(set(draws[0]) | set(draws[1])) == 16  # all new, numpy / random / torch
    assert resumed[0] == draws[1]




def test_resumed_iteration_based_run_draws_the_skipped_batches_through_the_pipeline():
    """onedl-mmengine positions an InfiniteSampler on resume (``skip``) instead of drawing
    the trained batches; the hook draws them (num_workers=0), so the batch after the resume
    point gets the augmentation of the uninterrupted run. A no-op on mmengine 0.10.7, which
    draws them itself."""
    from types import SimpleNamespace

    import pytest
    from mmengine.dataset import InfiniteSampler, pseudo_collate

    from s2aformer_mm.engine.randomness import replay_skipped_batches

    if not hasattr(InfiniteSampler, 'skip'):
        assert replay_skipped_batches(SimpleNamespace(dataloader_iterator=iter([])), 3) is None
        pytest.skip('this mmengine (upstream line) replays the skipped batches itself')

    def run(resume_at):
        np.random.seed(0)
        random.seed(0)
        loader = torch.utils.data.DataLoader(_RandomDraws(), batch_size=3, num_workers=0,
                                             sampler=InfiniteSampler(_RandomDraws(), seed=1),
                                             collate_fn=pseudo_collate)
        loop = SimpleNamespace(dataloader=loader, fast_forward_on_resume=False,
                               dataloader_iterator=SimpleNamespace(skip_iter=None))
        if resume_at:
            replay_skipped_batches(loop, resume_at)
            loader.sampler.skip(resume_at * 3)   # what the loop does next
        batches = iter(loader)
        # indices, numpy and random draws (torch is reseeded every iteration by the hook)
        return [list(next(batches))[:3] for _ in range(resume_at, 5)]

    uninterrupted = run(0)
    for resume_at in (1, 3):
        assert run(resume_at) == uninterrupted[resume_at:]
