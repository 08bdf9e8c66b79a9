"""Per-epoch seeds of epoch-based loaders (s2aformer_mm/engine/randomness.py and the
configs' ``s2aformer_epoch_loader``); resumed runs are in tests/e2e/test_reliability.py."""
import copy
import random
from types import SimpleNamespace

import numpy as np
import pytest
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


@pytest.mark.parametrize('workers', [0, 2])
def test_resumed_iteration_based_run_continues_the_pipelines_draws(workers):
    """mmengine 0.10.7 resumes an iteration-based run by drawing the trained batches, so the
    pipeline's draws (in this process or in each persistent worker) continue as in the
    uninterrupted run; onedl-mmengine 0.10.12 positions the sampler instead and its workers
    start afresh. With the hook's replay both lines continue the uninterrupted draws."""
    from mmengine.registry import DATASETS, DefaultScope
    from mmengine.runner import Runner
    from mmengine.runner.loops import _InfiniteDataloaderIterator

    from s2aformer_mm.engine.randomness import replay_skipped_batches
    DATASETS.register_module('_RandomDraws', module=_RandomDraws, force=True)
    loader_cfg = dict(batch_size=2, num_workers=workers, persistent_workers=bool(workers),
                      dataset=dict(type='_RandomDraws'), collate_fn=dict(type='pseudo_collate'),
                      sampler=dict(type='InfiniteSampler', shuffle=True))
    onedl = hasattr(_InfiniteDataloaderIterator, 'skip_iter')

    def run(resume_at, replay=True):
        np.random.seed(0)
        random.seed(0)
        torch.manual_seed(0)
        loader = Runner.build_dataloader(copy.deepcopy(loader_cfg), seed=0)
        loop = SimpleNamespace(dataloader=loader, fast_forward_on_resume=False,
                               dataloader_iterator=_InfiniteDataloaderIterator(loader))
        if resume_at and replay:
            replay_skipped_batches(loop, resume_at)   # the hook, before the loop skips
        if resume_at:   # what IterBasedTrainLoop.run does then, on each line
            if not onedl:
                for _ in range(resume_at):
                    next(loop.dataloader_iterator)
            elif not loop.fast_forward_on_resume:
                loop.dataloader_iterator.skip_iter(resume_at)
        # indices, numpy and random draws (torch is reseeded every iteration by the hook)
        return [[sample[:3] for sample in next(loop.dataloader_iterator)]
                for _ in range(resume_at, 6)]

    with DefaultScope.overwrite_default_scope('mmengine'):
        uninterrupted = run(0)
        for resume_at in (1, 4):
            assert run(resume_at) == uninterrupted[resume_at:], resume_at
        if onedl:   # why: the line's own resume starts the draws afresh
            assert run(4, replay=False) != uninterrupted[4:]
