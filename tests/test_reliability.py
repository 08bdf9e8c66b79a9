"""Reliability of the tools on CPU (issue 5): kill and resume, kills while saving,
safe loading through the tools, clear errors for bad input, determinism, 2-process
DDP equivalence and a dying rank, odd input shapes.

Every training run goes through ``tools/train.py`` / ``tools/dist_train.sh`` as a
subprocess, on procedurally generated data in tmp, with the *shipped* configs shrunk
through ``--cfg-options`` (mini variant, 64x64 images, a few iterations) and
deterministic settings (``randomness=dict(seed=0, deterministic=True)``,
``num_workers=0``, one OpenMP thread, ``log_processor.window_size=1`` so the logged
loss of an iteration is that iteration's loss, not a running mean).

The kill/resume runs keep drop path and dropout on (as the recipes do): mmengine does
not checkpoint torch's RNG state, and the tools' ``IterationSeedHook`` reseeds torch
at every iteration, so a resumed run reproduces the uninterrupted one bit for bit.
"""
import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from mmengine.config import Config

from s2aformer_mm.checkpoint import safe_load
from s2aformer_mm.datasets import generate_ade20k, generate_imagenet
from s2aformer_mm.testing import ProcessJob

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
SEG_CFG = 'configs/mmseg/fpn_s2aformer_mini_ade20k.py'
CLS_CFG = 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py'
RETINA_CFG = 'configs/mmdet/retinanet_s2aformer_mini_fpn_1x_coco.py'
MASK_CFG = 'configs/mmdet/mask-rcnn_s2aformer_mini_fpn_1x_coco.py'
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
DETERMINISTIC = ['randomness.seed=0', 'randomness.deterministic=True',
                 'log_processor.window_size=1', 'default_hooks.logger.interval=1']
SEG_ITERS, SEG_CKPT = 6, 2  # checkpoints at 2, 4, 6


# --------------------------------------------------------------------------- helpers
def run(cmd, expect_ok=True, timeout=240, env=None):
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if expect_ok:
        assert proc.returncode == 0, f'{" ".join(map(str, cmd))} failed:\n{out[-6000:]}'
    return proc.returncode, out


def tool(name, *args, **kwargs):
    return run([sys.executable, f'tools/{name}.py', *args], **kwargs)


def Job(cmd, env=None):
    return ProcessJob(cmd, cwd=REPO, env=env or ENV)


def loader_opts(root, batch=2):
    opts = []
    for loader in LOADERS:
        opts += [f'{loader}.dataset.data_root={root}', f'{loader}.num_workers=0',
                 f'{loader}.persistent_workers=False', f'{loader}.batch_size={batch}']
    return opts


def seg_opts(data, iters=SEG_ITERS, ckpt=SEG_CKPT, extra=()):
    """Semantic FPN mini, 64x64 crops, 256-channel FPN narrowed to 64 (checkpoints of
    ~15 MB instead of 75 MB), with drop path and dropout (atomic checkpoint writes are the
    tools' default)."""
    return [*loader_opts(data / 'ade'), *DETERMINISTIC,
            'train_dataloader.dataset.pipeline.2.scale=(256,64)',
            'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
            'model.data_preprocessor.size=(64,64)',
            'val_dataloader.dataset.pipeline.1.scale=(256,64)',
            'test_dataloader.dataset.pipeline.1.scale=(256,64)',
            'model.backbone.init_cfg=None', 'model.neck.out_channels=64',
            'model.decode_head.in_channels=[64,64,64,64]', 'model.decode_head.channels=32',
            # Random in the model: drop path in the backbone, dropout in the head.
            'model.backbone.drop_path_rate=0.2', 'model.decode_head.dropout_ratio=0.1',
            f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={ckpt}', *extra]


def cls_opts(data, extra=()):
    """Classifier mini on 8 images, batch 4, 64x64 crops: 2 epochs of 2 iterations, no val."""
    return [*loader_opts(data / 'imagenet', batch=4), *DETERMINISTIC,
            'train_dataloader.dataset.pipeline.1.scale=64',  # RandomResizedCrop 224 -> 64
            'train_cfg.max_epochs=2', 'train_cfg.val_interval=100', *extra]


def scalars(work):
    """One list of scalar records (vis_data/scalars.json) per run in ``work``, oldest first."""
    runs = sorted(Path(work).glob('2*/vis_data/scalars.json'))
    return [[json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in runs]


def train_losses(records):
    return {r['iter']: r['loss'] for r in records if 'loss' in r and 'iter' in r}


def val_metrics(records):
    return [{k: v for k, v in r.items() if k in ('aAcc', 'mIoU', 'mAcc')}
            for r in records if 'mIoU' in r]


def weights(path):
    return safe_load(str(path))['state_dict']


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, (f'{len(different)} tensors differ, e.g. {different[:3]}; max abs '
                           f'diff {max((wa[k] - wb[k]).abs().max().item() for k in different)}')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    generate_ade20k(str(root / 'ade'), num_train=8, num_val=2, size=64)
    generate_imagenet(str(root / 'imagenet'), num_train=8, num_val=4, size=64)
    return root


@pytest.fixture(scope='module')
def seg_reference(data, tmp_path_factory):
    """An uninterrupted 6-iteration Semantic FPN run: (work dir, losses, val metrics)."""
    work = tmp_path_factory.mktemp('seg_ref')
    _, out = tool('train', SEG_CFG, '--work-dir', work, '--cfg-options', *seg_opts(data))
    assert f'training finished at iteration {SEG_ITERS}' in out
    (records, ) = scalars(work)
    losses = train_losses(records)
    assert sorted(losses) == list(range(1, SEG_ITERS + 1))
    return work, losses, val_metrics(records)


# --------------------------------------------------------------------------- 1. kill + resume
def test_sigkill_between_checkpoints_then_resume_matches_uninterrupted(data, seg_reference,
                                                                       tmp_path):
    ref_work, ref_losses, ref_metrics = seg_reference
    opts = seg_opts(data)
    job = Job([sys.executable, 'tools/train.py', SEG_CFG, '--work-dir', tmp_path,
               '--cfg-options', *opts])
    # Iteration 3 is done (its log line is written after it), iteration 2 is the
    # newest checkpoint: kill between checkpoints.
    job.wait_until(lambda: f'Iter(train) [3/{SEG_ITERS}]' in job.out)
    assert job.kill() == -signal.SIGKILL
    assert (tmp_path / 'iter_2.pth').is_file() and not (tmp_path / 'iter_4.pth').exists()

    _, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--resume', '--cfg-options', *opts)
    assert re.search(r'resumed epoch: \d+, iter: 2\b', out), out[-3000:]
    killed, resumed = scalars(tmp_path)
    # Only the iteration since the last checkpoint (3) is repeated.
    assert min(train_losses(resumed)) == 3 and 'Iter(train) [1/' not in out
    # (The killed run's console showed iteration 3; its scalars.json line may not have been
    # written yet when the kill landed, so it is not required there.)
    # The repeated iteration and everything after it match the uninterrupted run.
    assert train_losses(killed) == {i: ref_losses[i] for i in train_losses(killed)}
    assert train_losses(resumed) == {i: ref_losses[i] for i in range(3, SEG_ITERS + 1)}
    assert val_metrics(resumed) == ref_metrics
    assert_same_weights(tmp_path / f'iter_{SEG_ITERS}.pth', ref_work / f'iter_{SEG_ITERS}.pth')


def _saving(work, name):
    prefix = f'.{name}.'
    return lambda: any(n.startswith(prefix) and n.endswith('.tmp') for n in os.listdir(work))


def test_sigkill_while_saving_keeps_previous_checkpoint(data, seg_reference, tmp_path):
    """SIGKILL while iter_4.pth is being written (atomic_local backend, selected through
    --cfg-options): the previous checkpoint stays usable, last_checkpoint still names it,
    no truncated iter_4.pth appears, and --resume continues from it to the same result."""
    ref_work, ref_losses, ref_metrics = seg_reference
    opts = seg_opts(data)
    job = Job([sys.executable, 'tools/train.py', SEG_CFG, '--work-dir', tmp_path,
               '--cfg-options', *opts])
    job.wait_until(_saving(tmp_path, 'iter_4.pth'), poll=0.0005)
    job.kill()
    assert 'Saving checkpoint at 4 iterations' in job.out
    assert not (tmp_path / 'iter_4.pth').exists(), 'a partial checkpoint was left behind'
    assert (tmp_path / 'last_checkpoint').read_text().strip() == str(tmp_path / 'iter_2.pth')
    assert safe_load(str(tmp_path / 'iter_2.pth'))['meta']['iter'] == 2

    _, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--resume', '--cfg-options', *opts)
    assert re.search(r'resumed epoch: \d+, iter: 2\b', out), out[-3000:]
    resumed = scalars(tmp_path)[-1]
    assert train_losses(resumed) == {i: ref_losses[i] for i in range(3, SEG_ITERS + 1)}
    assert val_metrics(resumed) == ref_metrics
    assert_same_weights(tmp_path / f'iter_{SEG_ITERS}.pth', ref_work / f'iter_{SEG_ITERS}.pth')


def test_sigkill_while_saving_with_max_keep_ckpts_1_leaves_a_resumable_checkpoint(data,
                                                                                  tmp_path):
    opts = seg_opts(data, extra=['default_hooks.checkpoint.max_keep_ckpts=1'])
    job = Job([sys.executable, 'tools/train.py', SEG_CFG, '--work-dir', tmp_path,
               '--cfg-options', *opts])
    job.wait_until(_saving(tmp_path, 'iter_4.pth'), poll=0.0005)
    job.kill()
    remaining = sorted(p.name for p in tmp_path.glob('iter_*.pth'))
    assert remaining, 'no checkpoint left after a kill while saving'
    rc, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--resume', '--cfg-options',
                   *opts, expect_ok=False)
    assert rc == 0 and re.search(r'resumed epoch: \d+, iter: 2\b', out), out[-3000:]


# --------------------------------------------------------------------------- 4. determinism
def test_dense_runs_with_same_seed_are_identical(data, seg_reference, tmp_path):
    ref_work, ref_losses, ref_metrics = seg_reference
    tool('train', SEG_CFG, '--work-dir', tmp_path, '--cfg-options', *seg_opts(data))
    (records, ) = scalars(tmp_path)
    assert train_losses(records) == ref_losses  # bitwise: same floats in the json
    assert len(set(ref_losses.values())) > 1  # the run really trains, not a constant
    assert val_metrics(records) == ref_metrics
    assert_same_weights(tmp_path / f'iter_{SEG_ITERS}.pth', ref_work / f'iter_{SEG_ITERS}.pth')


@pytest.mark.parametrize('with_cp,drop_path,expected', [
    (True, 0.1, 7), (False, 0.1, 0), (True, 0.0, 0)])
def test_checkpointed_random_layers_found(with_cp, drop_path, expected):
    """What the eager-backend refusal below looks for: drop path inside with_cp blocks
    (mini: 8 blocks, the first at drop path rate 0)."""
    from s2aformer_mm import S2AFormer
    from s2aformer_mm.engine.compiling import _checkpointed_random_layers
    found = _checkpointed_random_layers(
        S2AFormer('mini', drop_path_rate=drop_path, with_cp=with_cp))
    assert len(found) == expected and all(n.endswith('.drop_path') for n in found), found


class _ModeLinear(torch.nn.Linear):
    """Reads ``training`` (as dropout and BN do), so a compiled call in eval recompiles."""

    def forward(self, x):
        return super().forward(x) if self.training else super().forward(x)


def test_compiled_forward_is_eager_in_eval_and_not_shared_by_deep_copies():
    """compile_model on a toy model: only children with parameters (not the data
    preprocessor), compiled while training; a deep copy (what EMAHook makes) computes
    with its own weights, not through the original's compiled forward."""
    from types import SimpleNamespace

    from s2aformer_mm.engine.compiling import CompiledWhileTraining, compile_model
    model = torch.nn.Module()
    model.data_preprocessor, model.backbone = torch.nn.Linear(2, 2), _ModeLinear(2, 2)
    model.act = torch.nn.ReLU()
    graphs = []

    def backend(gm, example_inputs):  # counts what dynamo compiles, runs it as traced
        graphs.append(gm)
        return gm.forward

    hooks = []
    compile_model(SimpleNamespace(model=model, register_hook=lambda h, priority: hooks.append(h)),
                  dict(backend=backend))
    assert isinstance(model.backbone.forward, CompiledWhileTraining)
    assert 'forward' not in vars(model.data_preprocessor) and 'forward' not in vars(model.act)
    x = torch.randn(3, 2)
    with torch.no_grad():
        expected = model.backbone.weight @ x.t()
        assert torch.allclose(model.backbone(x).t() - model.backbone.bias[:, None], expected)
        assert len(graphs) == 1
        model.eval()
        assert torch.allclose(model.backbone(x).t() - model.backbone.bias[:, None], expected)
        assert len(graphs) == 1  # eval: eager, nothing compiled
        model.train()
        twin = copy.deepcopy(model)
        twin.backbone.weight.mul_(2)
        assert torch.allclose(twin.backbone(x).t() - twin.backbone.bias[:, None], 2 * expected)
        assert torch.allclose(model.backbone(x).t() - model.backbone.bias[:, None], expected)
        hooks[0].after_train_iter(None, 0)   # the backbone's forward was called: kept
        assert isinstance(vars(model.backbone)['forward'], CompiledWhileTraining)


def test_compile_hands_an_uncalled_forward_down_to_its_sub_networks():
    """Like mmdet's RoI heads: training calls head.fc directly, never head.forward. After
    an iteration the head runs eager again and its sub-network is compiled instead."""
    from types import SimpleNamespace

    from s2aformer_mm.engine.compiling import CompiledWhileTraining, compile_model
    model = torch.nn.Module()
    model.head = torch.nn.Module()
    model.head.fc, model.head.scale = torch.nn.Linear(2, 2), torch.nn.ReLU()
    graphs, hooks = [], []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compile_model(SimpleNamespace(model=model, register_hook=lambda h, priority: hooks.append(h)),
                  dict(backend=backend))
    x = torch.randn(3, 2)
    model.head.fc(x)   # the "loss" path
    assert not graphs and isinstance(vars(model.head)['forward'], CompiledWhileTraining)
    hooks[0].after_train_iter(None, 0)
    assert 'forward' not in vars(model.head)
    assert 'forward' not in vars(model.head.scale)   # no parameters: left alone
    out = model.head.fc(x)
    assert len(graphs) == 1 and torch.allclose(out, x @ model.head.fc.weight.t()
                                               + model.head.fc.bias)
    hooks[0].after_train_iter(None, 1)   # now called: stays compiled
    assert isinstance(vars(model.head.fc)['forward'], CompiledWhileTraining)


def test_compile_option_trains_like_eager_to_lr_zero(data, tmp_path):
    """``compile`` in a config: mmengine compiles ``train_step`` with the optimizer step,
    and a compiled AdamW step at ``lr == 0`` (PolyLR with ``eta_min=0``, the ADE20K
    schedule, ends there) wrote NaN into parameters whose gradients were all zero. The
    tools compile the training forward only; with the ``eager`` backend (dynamo, same
    kernels) the run must match the uncompiled one and end with finite weights."""
    iters = 4
    opts = seg_opts(data, iters=iters, ckpt=iters, extra=[f'param_scheduler.0.end={iters}'])
    # With drop path in the with_cp blocks (the tools' CPU default) the eager backend is
    # refused: in backward it re-draws the masks (wrong gradients; aot_eager/inductor do not).
    rc, out = tool('train', SEG_CFG, '--work-dir', tmp_path / 'refused', '--cfg-options',
                   *opts, 'compile.backend=eager', expect_ok=False)
    assert rc != 0 and "compile=dict(backend='eager') with with_cp would train with wrong " \
        'gradients' in out and 'stages.0.1.drop_path' in out, out[-3000:]
    assert 'Iter(train)' not in out
    opts += ['model.backbone.drop_path_rate=0.0', 'model.decode_head.dropout_ratio=0.0']
    tool('train', SEG_CFG, '--work-dir', tmp_path / 'plain', '--cfg-options', *opts)
    _, out = tool('train', SEG_CFG, '--work-dir', tmp_path / 'compiled', '--cfg-options',
                  *opts, 'compile.backend=eager', env=dict(ENV, TORCH_LOGS='recompiles'))
    assert 'training forward of backbone, neck, decode_head in EncoderDecoder (the ' \
        'losses and the optimizer step stay eager)' in out, out[-3000:]
    # The networks see fixed shapes; the loss (eager) would recompile per flip pattern.
    assert 'Recompiling function' not in out, out[-3000:]
    dumped = Config.fromfile(tmp_path / 'compiled' / Path(SEG_CFG).name)
    assert dumped.get('compile') == dict(backend='eager')  # work_dir's copy reruns the same
    (plain, ), (compiled, ) = scalars(tmp_path / 'plain'), scalars(tmp_path / 'compiled')
    assert [r['lr'] for r in compiled if 'lr' in r][-1] == 0.0  # the schedule reached 0
    assert train_losses(compiled) == train_losses(plain)
    final = weights(tmp_path / 'compiled' / f'iter_{iters}.pth')
    nan = [k for k, v in final.items() if v.is_floating_point() and not v.isfinite().all()]
    assert not nan, f'non-finite weights after compiled training: {nan[:5]}'
    assert_same_weights(tmp_path / 'compiled' / f'iter_{iters}.pth',
                        tmp_path / 'plain' / f'iter_{iters}.pth')


def test_classification_runs_with_same_seed_are_identical(data, tmp_path):
    opts = cls_opts(data, ['default_hooks.checkpoint.interval=100'])
    runs = []
    for name in ('a', 'b'):
        tool('train', CLS_CFG, '--work-dir', tmp_path / name, '--cfg-options', *opts)
        (records, ) = scalars(tmp_path / name)
        runs.append(train_losses(records))
    assert sorted(runs[0]) == [1, 2, 3, 4], runs[0]
    assert runs[0] == runs[1]
    assert len(set(runs[0].values())) > 1


def test_iteration_based_resume_with_loader_workers_matches_uninterrupted(data, seg_reference,
                                                                          tmp_path):
    """The seg runs above load in this process; with 2 persistent workers (as ADE20K's
    loaders) mmengine's resume replays the skipped batches through the workers, so the
    resumed run draws the same augmentations too."""
    ref_work, ref_losses, _ = seg_reference
    opts = [*seg_opts(data), 'train_dataloader.num_workers=2',
            'train_dataloader.persistent_workers=True']
    tool('train', SEG_CFG, '--work-dir', tmp_path / 'a', '--cfg-options', *opts)
    _, out = tool('train', SEG_CFG, '--work-dir', tmp_path / 'b', '--resume',
                  tmp_path / 'a' / 'iter_2.pth', '--cfg-options', *opts)
    assert re.search(r'resumed epoch: \d+, iter: 2\b', out), out[-3000:]
    (uninterrupted, ), (resumed, ) = scalars(tmp_path / 'a'), scalars(tmp_path / 'b')
    assert train_losses(resumed) == {i: train_losses(uninterrupted)[i]
                                    for i in range(3, SEG_ITERS + 1)}
    assert train_losses(uninterrupted) != ref_losses  # workers draw their own numbers
    assert_same_weights(tmp_path / 'b' / f'iter_{SEG_ITERS}.pth',
                        tmp_path / 'a' / f'iter_{SEG_ITERS}.pth')


@pytest.mark.parametrize('workers', [0, 2])
def test_epoch_based_resume_matches_uninterrupted(data, tmp_path, workers):
    """Classification (epoch-based): resumed from epoch_1.pth, epoch 2 repeats the
    uninterrupted run bit for bit: augmentation drawn in this process (0 workers) or in
    workers (2, persistent as mmdet's COCO loaders, which the tools restart per epoch)."""
    opts = cls_opts(data, [f'train_dataloader.num_workers={workers}',
                           f'train_dataloader.persistent_workers={bool(workers)}',
                           'model.backbone.drop_path_rate=0.1'])
    _, out = tool('train', CLS_CFG, '--work-dir', tmp_path / 'a', '--cfg-options', *opts)
    assert ('workers restart every epoch' in out) == bool(workers), out[-3000:]
    _, out = tool('train', CLS_CFG, '--work-dir', tmp_path / 'b', '--resume',
                  tmp_path / 'a' / 'epoch_1.pth', '--cfg-options', *opts)
    assert re.search(r'resumed epoch: 1, iter: 2\b', out), out[-3000:]
    (uninterrupted, ), (resumed, ) = scalars(tmp_path / 'a'), scalars(tmp_path / 'b')
    assert sorted(train_losses(resumed)) == [3, 4]
    assert train_losses(resumed) == {i: train_losses(uninterrupted)[i] for i in (3, 4)}
    assert_same_weights(tmp_path / 'b' / 'epoch_2.pth', tmp_path / 'a' / 'epoch_2.pth')


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

    from s2aformer_mm.engine.randomness import IterationSeedHook, apply_seeding
    DATASETS.register_module('_RandomDraws', module=_RandomDraws, force=True)
    loader = dict(batch_size=1, num_workers=2, persistent_workers=True,
                  dataset=dict(type='_RandomDraws'), collate_fn=dict(type='default_collate'),
                  sampler=dict(type='DefaultSampler', shuffle=True))
    cfg = Config(dict(train_cfg=dict(by_epoch=True, max_epochs=2), train_dataloader=loader))
    stock = copy.deepcopy(cfg.train_dataloader)
    stock.persistent_workers = False  # as mmpretrain's ImageNet base config
    apply_seeding(cfg)
    assert cfg.train_dataloader.persistent_workers is False
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


# --------------------------------------------------------------------------- 2. safe loading
class _Evil:
    """Unpickling this runs ``touch <target>``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f'touch {self.target}', ))


@pytest.fixture
def evil_ckpt(tmp_path):
    target = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'meta': {'iter': 2, 'epoch': 0}, 'state_dict': {}, 'x': _Evil(target)}, path)
    return path, target


def _assert_refused(rc, out, path, target):
    assert rc != 0
    assert not target.exists(), 'the pickle executed code'
    # the problem (the refused global) and where (the file) ...
    assert 'posix.system' in out or 'os.system' in out, out[-3000:]
    assert str(path) in out, out[-3000:]
    # ... and that it was refused on purpose, by the weights-only loader
    assert re.search(r'weights.only|UnsafeCheckpointError', out), out[-3000:]


def test_tools_test_refuses_code_executing_checkpoint(data, evil_ckpt, tmp_path):
    path, target = evil_ckpt
    rc, out = tool('test', SEG_CFG, path, '--work-dir', tmp_path / 'w', '--cfg-options',
                   *seg_opts(data), expect_ok=False)
    _assert_refused(rc, out, path, target)


def test_resume_and_load_from_refuse_code_executing_checkpoint(data, evil_ckpt, tmp_path):
    path, target = evil_ckpt
    for args in (['--resume', path], ['--cfg-options', f'load_from={path}']):
        opts = seg_opts(data)
        if args[0] == '--cfg-options':
            args, opts = [], [*opts, f'load_from={path}']
        rc, out = tool('train', SEG_CFG, '--work-dir', tmp_path / 'w', *args, '--cfg-options',
                       *opts, expect_ok=False)
        _assert_refused(rc, out, path, target)
        assert 'Iter(train)' not in out


# --------------------------------------------------------------------------- 3. bad input
def test_unknown_variant_through_train_tool(data, tmp_path):
    rc, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--cfg-options', *seg_opts(data),
                   'model.backbone.arch=huge', expect_ok=False)
    assert rc != 0
    assert "Unknown S2AFormer arch 'huge'" in out and "'mini'" in out, out[-3000:]


def test_unknown_scope_through_train_tool(tmp_path):
    rc, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--cfg-options',
                   'default_scope=mmfoo', expect_ok=False)
    assert rc != 0
    assert "default_scope='mmfoo'" in out and "'mmdet', 'mmpretrain', 'mmseg'" in out, out[-2000:]


def test_missing_pretrained_file_through_train_tool(data, tmp_path):
    missing = tmp_path / 'nope_in1k.pth'
    opts = [o for o in seg_opts(data) if o != 'model.backbone.init_cfg=None']
    rc, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--cfg-options', *opts,
                   f'model.backbone.init_cfg.checkpoint={missing}', expect_ok=False)
    assert rc != 0
    assert f"Backbone checkpoint '{missing}'" in out and 'does not exist' in out
    assert 'model.backbone.init_cfg=None' in out and 'Iter(train)' not in out
    # No ImageNet weights are published: the fix is to train this variant's classifier.
    assert 'tools/train.py configs/mmpretrain/s2aformer_mini_4xb256_in1k.py' in out
    assert 'download' not in out.lower() and 'Traceback' not in out


@pytest.fixture(scope='module')
def t_variant_ckpt(data, tmp_path_factory):
    """A Semantic FPN checkpoint of the *t* variant (saved by the tools' helper)."""
    from s2aformer_mm.engine.launch import save_initial_checkpoint
    path = tmp_path_factory.mktemp('t') / 'fpn_t.pth'
    save_initial_checkpoint(SEG_CFG, str(path), {'model.backbone.init_cfg': None,
                                                 'model.backbone.arch': 't'})
    return path


def test_other_variant_checkpoint_as_pretrained_lists_mismatches(data, t_variant_ckpt, tmp_path):
    opts = [o for o in seg_opts(data) if o != 'model.backbone.init_cfg=None']
    rc, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--cfg-options', *opts,
                   f'model.backbone.init_cfg.checkpoint={t_variant_ckpt}', expect_ok=False)
    assert rc != 0 and 'Iter(train)' not in out
    assert 'does not match this S2AFormer backbone' in out, out[-3000:]
    assert re.search(r'\d+ shape mismatches: \S+: checkpoint \(48, ', out), out[-3000:]
    assert 'same variant (arch)' in out


def test_other_variant_checkpoint_through_test_tool_is_an_error(data, t_variant_ckpt,
                                                                tmp_path):
    rc, out = tool('test', SEG_CFG, t_variant_ckpt, '--work-dir', tmp_path, '--cfg-options',
                   *seg_opts(data), expect_ok=False)
    assert rc != 0, 'a checkpoint of another variant was evaluated'
    assert 'does not match this model' in out, out[-3000:]
    # C1 is 48 in t, 32 in mini; t's stage 3 has 6 blocks, mini's 2.
    assert re.search(r'\d+ shape mismatches: backbone\.patch_embeds\.0\.proj\.weight: '
                     r'checkpoint \(48, 32, 2, 2\) vs model \(32, 32, 2, 2\)', out), out[-3000:]
    assert re.search(r'\d+ unexpected keys: backbone\.stages\.2\.2\.', out)
    assert 'same model and variant (arch)' in out
    assert max(len(line) for line in out.splitlines()[-6:]) < 600  # summarised key lists


def test_incompatible_library_version_at_import():
    code = textwrap.dedent('''
        import importlib.metadata as md
        real = md.version
        md.version = lambda name: '0.30.0' if name in ('mmsegmentation', 'mmseg') else real(name)
        import s2aformer_mm
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert proc.returncode != 0
    assert 'mmsegmentation 0.30.0' in proc.stderr and 'mmsegmentation==1.2.2' in proc.stderr


# --------------------------------------------------------------------------- 5. distributed
DDP_CONFIG = '''
_base_ = [{base!r}]
# Comparable 1- vs 2-process runs: no random augmentation (each rank would draw its
# own crops from the same seeded stream), GroupNorm in the decode head (per sample,
# unlike BN whose batch statistics depend on the per-rank batch), backbone BN frozen
# (norm_eval=True, as shipped), no dropout.
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(init_cfg=None),
    neck=dict(out_channels=64),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=32, dropout_ratio=0.0,
                     norm_cfg=dict(type='GN', num_groups=8, requires_grad=True)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size={batch}, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={root!r}, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root={root!r}))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = []
train_cfg = dict(max_iters={iters}, val_interval=1000)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={iters}, save_last=True))
log_processor = dict(window_size=1)
randomness = dict(seed=0, deterministic=True)
log_level = 'DEBUG'  # every rank writes its own log file (the per-rank losses)
'''
DDP_ITERS = 4


def _ddp_config(tmp_path, data, batch, iters=DDP_ITERS):
    path = tmp_path / f'fpn_ddp_b{batch}.py'
    path.write_text(DDP_CONFIG.format(base=str(REPO / SEG_CFG), batch=batch,
                                      root=str(data / 'ade'), iters=iters))
    return path


def _rank_losses(work, rank):
    logs = [p for p in Path(work).glob('2*/*.log') if f'rank{rank}' in p.name]
    assert len(logs) == 1, list(Path(work).rglob('*.log'))
    found = re.findall(r'Iter\(train\) \[(\d+)/\d+\].*?  loss: ([\d.]+)', logs[0].read_text())
    return {int(i): float(v) for i, v in found}


def _dist_env():
    return dict(ENV, PORT=str(random.randint(29600, 29999)))


def test_destroy_distributed_joins_gloo_threads(tmp_path):
    """A live DDP wrapper keeps the gloo group (and its threads) alive past
    destroy_process_group(); freed at interpreter exit it aborted ~1 in 100 finished
    2-process runs. destroy_distributed(runner) must leave no gloo thread behind."""
    code = textwrap.dedent(f'''
        import os, types, torch, torch.distributed as dist
        from s2aformer_mm.engine import CPUDistributedDataParallel, destroy_distributed
        def gloo_threads():
            names = [open(f'/proc/self/task/{{t}}/comm').read().strip()
                     for t in os.listdir('/proc/self/task')]
            return sorted(n for n in names if 'gloo' in n)
        dist.init_process_group('gloo', init_method='file://{tmp_path}/store', rank=0,
                                world_size=1)
        inner = torch.nn.Linear(2, 2)
        runner = types.SimpleNamespace(model=CPUDistributedDataParallel(inner))
        runner.model(torch.ones(1, 2)).sum().backward()
        print('during', gloo_threads())
        destroy_distributed(runner)
        print('after', gloo_threads(), runner.model is inner, dist.is_initialized())
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(' ', 1) for line in proc.stdout.splitlines())
    assert 'pt_gloo_runloop' in lines['during']  # the check below can see them
    assert lines['after'] == '[] True False', proc.stdout


def test_two_process_ddp_matches_one_process_same_global_batch(data, tmp_path):
    """1 process x batch 2 vs 2 gloo processes x batch 1 (same samples per iteration:
    the sampler gives rank r the indices r::2 of the same permutation). The loss of an
    iteration is a mean over equal-sized images, so the mean of the two ranks' losses
    equals the 1-process loss; DDP averages gradients, so the weights agree too.
    Tolerance: 2e-4 on the losses (rank 1's loss comes from its text log, 4 decimals),
    1e-3 relative on the total weight change (gloo sums gradients in another order)."""
    one = tmp_path / 'one'
    tool('train', _ddp_config(tmp_path, data, 2), '--work-dir', one)
    (records, ) = scalars(one)
    single = train_losses(records)
    two = tmp_path / 'two'
    proc = subprocess.run(['bash', 'tools/dist_train.sh', str(_ddp_config(tmp_path, data, 1)),
                           '2', '--work-dir', str(two)], cwd=REPO, env=_dist_env(),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert 'GPU number: 2' in out
    # Notes logged before the Runner's rank-aware logger exists: once, not once per rank.
    assert out.count('CPU allocator (train)') == 1, out[-6000:]
    assert out.count('gradient checkpointing enabled') == 1, out[-6000:]
    rank0, rank1 = _rank_losses(two, 0), _rank_losses(two, 1)
    assert sorted(single) == sorted(rank0) == sorted(rank1) == list(range(1, DDP_ITERS + 1))
    for i in single:
        assert abs((rank0[i] + rank1[i]) / 2 - single[i]) < 2e-4, (i, rank0, rank1, single)
    # The two ranks saw different images (otherwise the check above is vacuous).
    assert any(abs(rank0[i] - rank1[i]) > 1e-2 for i in single)
    # Weights: the DDP - 1-process difference is tiny against how far training moved them.
    from s2aformer_mm.engine.launch import save_initial_checkpoint
    init = save_initial_checkpoint(str(_ddp_config(tmp_path, data, 2)),
                                   str(tmp_path / 'init.pth'))
    w0, w1, w2 = (weights(p) for p in (init, one / f'iter_{DDP_ITERS}.pth',
                                       two / f'iter_{DDP_ITERS}.pth'))
    moved = torch.cat([(w1[k] - w0[k]).flatten().double() for k in w1 if w1[k].is_floating_point()])
    diff = torch.cat([(w2[k] - w1[k]).flatten().double() for k in w1 if w1[k].is_floating_point()])
    assert moved.norm() > 0
    assert diff.norm() / moved.norm() < 1e-3, (diff.norm().item(), moved.norm().item())


def test_a_rank_killed_makes_the_job_fail_fast(data, tmp_path):
    """SIGKILL rank 1 mid-training: torchrun tears the job down within seconds and names
    the dead rank and the signal; rank 0 does not linger (gloo would block it in the
    next all-reduce for the 30-minute process-group timeout otherwise)."""
    cfg = _ddp_config(tmp_path, data, 1, iters=500)
    job = Job(['bash', 'tools/dist_train.sh', cfg, 2, '--work-dir', tmp_path / 'w'],
              env=_dist_env())
    # mmengine pads the counter to the width of max_iters: 'Iter(train) [  2/500]'
    job.wait_until(lambda: re.search(r'Iter\(train\) \[\s*2/500\]', job.out), timeout=240,
                   poll=0.05)
    workers = {int(p.environ().get('RANK', -1)): p
               for p in psutil.Process(job.proc.pid).children(recursive=True)
               if 'tools/train.py' in ' '.join(p.cmdline())}
    assert set(workers) == {0, 1}, workers
    t0 = time.monotonic()
    os.kill(workers[1].pid, signal.SIGKILL)
    rc = job.finish(timeout=120)
    elapsed = time.monotonic() - t0
    print(f'job ended with rc {rc} {elapsed:.1f}s after SIGKILL of rank 1')
    assert rc != 0
    assert elapsed < 60, f'the job took {elapsed:.0f}s to fail after a rank died'
    assert not workers[0].is_running() or workers[0].status() == psutil.STATUS_ZOMBIE
    assert re.search(r'rank\s*: 1 \(local_rank: 1\)', job.out), job.out[-4000:]
    assert 'Signal 9 (SIGKILL)' in job.out, job.out[-4000:]


# --------------------------------------------------------------------------- 6. odd shapes
ODD_SIZES = [(500, 375), (1333, 800), (37, 1000)]  # (width, height)


def _image(w, h):
    return np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_semantic_fpn_odd_sizes():
    from mmengine.config import Config
    from mmseg.apis import inference_model, init_model

    cfg = Config.fromfile(str(REPO / SEG_CFG))
    cfg.model.backbone.init_cfg = None
    model = init_model(cfg, None, device='cpu')
    for w, h in ODD_SIZES:
        with torch.no_grad():
            result = inference_model(model, _image(w, h))
        assert tuple(result.pred_sem_seg.data.shape) == (1, h, w), (w, h)
        assert tuple(result.seg_logits.data.shape[1:]) == (h, w)
        assert torch.isfinite(result.seg_logits.data).all()


@pytest.mark.parametrize('config,score_thr', [
    (RETINA_CFG, 'score_thr'), (MASK_CFG, 'rcnn.score_thr')], ids=['retinanet', 'mask-rcnn'])
def test_detectors_odd_sizes(config, score_thr):
    from mmdet.apis import inference_detector, init_detector
    from mmengine.config import Config

    cfg = Config.fromfile(str(REPO / config))
    cfg.model.backbone.init_cfg = None
    # untrained: keep every detection so there are boxes to check
    cfg.merge_from_dict({f'model.test_cfg.{score_thr}': 0.0})
    model = init_detector(cfg, None, device='cpu')
    for w, h in ODD_SIZES:
        with torch.no_grad():
            result = inference_detector(model, _image(w, h))
        boxes = result.pred_instances.bboxes
        assert len(boxes) > 0, (w, h)
        assert result.ori_shape == (h, w)
        assert torch.isfinite(boxes).all()
        # mmdet clips to the resized image, then divides by the scale factor: 1e-3 slack
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all(), (w, h)
        assert (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all(), (w, h)
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        if 'masks' in result.pred_instances:
            assert tuple(result.pred_instances.masks.shape[1:]) == (h, w)


# --------------------------------------------------------------------------- 7. CPU copy on CUDA
def _rewrite(cfg, monkeypatch, cuda, amp=False):
    """The tools' device-dependent rewriting of ``cfg`` for a 2-process run (run_train's
    order), on a machine with or without CUDA; returns the backend it initialises."""
    from s2aformer_mm.engine import launch

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    used = []

    def init_distributed(launcher, backend=None):  # its choice of a default backend
        used.append(backend or ('nccl' if cuda else 'gloo'))
        return used[-1]

    monkeypatch.setattr(launch, 'init_distributed', init_distributed)
    monkeypatch.setattr(launch, 'get_dist_info', lambda: (0, 2))
    cfg.launcher = 'pytorch'
    launch.apply_cpu_memory_defaults(cfg)
    launch.apply_amp(cfg, amp)
    launch.setup_distributed(cfg)
    return used[0]


def _cpu_copy(tmp_path, monkeypatch, **options):
    """The config copy a CPU run of the FPN config with --amp writes to its work dir."""
    cfg = Config.fromfile(str(REPO / SEG_CFG))
    cfg.merge_from_dict(options)
    assert _rewrite(cfg, monkeypatch, cuda=False, amp=True) == 'gloo'
    cfg.dump(str(tmp_path / 'copy.py'))  # what Runner.dump_config does
    return Config.fromfile(str(tmp_path / 'copy.py'))


def test_cpu_config_copy_on_cuda_uses_nccl_and_mmengine_ddp(tmp_path, monkeypatch):
    """The copy names CPUDistributedDataParallel and gloo; on CUDA it gets mmengine's DDP
    wrapper (same options) and nccl. A gloo the user chose without our wrapper stays."""
    dumped = _cpu_copy(tmp_path, monkeypatch)
    assert dumped.model_wrapper_cfg.type == 'CPUDistributedDataParallel'
    assert dumped.env_cfg.dist_cfg.backend == 'gloo'
    assert _rewrite(dumped, monkeypatch, cuda=True) == 'nccl'
    assert dumped.model_wrapper_cfg == dict(type='MMDistributedDataParallel',
                                            find_unused_parameters=False,
                                            broadcast_buffers=False)
    assert dumped.env_cfg.dist_cfg.backend == 'nccl'
    user = Config.fromfile(str(REPO / SEG_CFG))
    user.env_cfg.dist_cfg.backend = 'gloo'
    assert _rewrite(user, monkeypatch, cuda=True) == 'gloo'
    assert user.get('model_wrapper_cfg') is None


def test_cpu_config_copy_on_cuda_uses_fp16_amp(tmp_path, monkeypatch):
    """--amp on the CPU writes BF16AutocastOptimWrapper (CPU autocast: fp32 on CUDA); on
    CUDA the copy trains with the AMP of --amp there, without --amp."""
    dumped = _cpu_copy(tmp_path, monkeypatch)
    assert dumped.optim_wrapper.type == 'BF16AutocastOptimWrapper'
    _rewrite(dumped, monkeypatch, cuda=True)
    assert dumped.optim_wrapper.type == 'AmpOptimWrapper'
    assert dumped.optim_wrapper.loss_scale == 'dynamic'


def test_cpu_config_copy_on_cuda_drops_only_the_tools_with_cp(tmp_path, monkeypatch):
    """with_cp=True set by the CPU memory default is recorded in the copy and removed on
    CUDA; set by the user (config or --cfg-options on a rerun) it stays."""
    from s2aformer_mm.engine.launch import load_config, parse_train_args

    dumped = _cpu_copy(tmp_path, monkeypatch)
    assert dumped.model.backbone.with_cp is True
    assert dumped._s2aformer_cpu_defaults == ['model.backbone.with_cp']
    again = Config.fromfile(str(tmp_path / 'copy.py'))  # a CPU rerun keeps the record
    _rewrite(again, monkeypatch, cuda=False)
    assert again._s2aformer_cpu_defaults == ['model.backbone.with_cp']
    _rewrite(dumped, monkeypatch, cuda=True)
    assert 'with_cp' not in dumped.model.backbone and '_s2aformer_cpu_defaults' not in dumped

    monkeypatch.setenv('LOCAL_RANK', '0')
    rerun, _ = load_config(parse_train_args([
        str(tmp_path / 'copy.py'), '--work-dir', str(tmp_path / 'w'),
        '--cfg-options', 'model.backbone.with_cp=True']))
    assert '_s2aformer_cpu_defaults' not in rerun
    _rewrite(rerun, monkeypatch, cuda=True)
    assert rerun.model.backbone.with_cp is True

    user = _cpu_copy(tmp_path, monkeypatch, **{'model.backbone.with_cp': True})
    assert '_s2aformer_cpu_defaults' not in user
    _rewrite(user, monkeypatch, cuda=True)
    assert user.model.backbone.with_cp is True
