"""Checkpoint loading: Pretrained with prefix, loud missing keys, Runner round trip
under torch's weights_only=True default, and refusal of code-executing pickles."""
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.runner import Runner

from s2aformer_mm import S2AFormer
from s2aformer_mm.checkpoint import (CheckpointMismatchError, CorruptCheckpointError,
                                     NotACheckpointError, UnsafeCheckpointError,
                                     check_model_checkpoint, safe_load)


class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.backbone = S2AFormer('mini')
        self.fc = nn.Linear(256, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.fc(self.backbone(inputs)[-1].mean((2, 3)))
        if mode == 'loss':
            return {'loss': F.cross_entropy(logits, labels)}
        return logits


def _loader():
    data = [dict(inputs=torch.randn(3, 32, 32), labels=torch.tensor(i % 2)) for i in range(8)]
    return torch.utils.data.DataLoader(data, batch_size=2)


def _runner(work_dir, max_iters, **kw):
    return Runner(model=Toy(), work_dir=str(work_dir), train_dataloader=_loader(),
                  train_cfg=dict(by_epoch=False, max_iters=max_iters),
                  optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
                  default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2,
                                                     by_epoch=False),
                                     logger=dict(type='LoggerHook', interval=1)),
                  default_scope=None, **kw)


@pytest.fixture(scope='module')
def runner_ckpt(tmp_path_factory):
    work = tmp_path_factory.mktemp('runner')
    runner = _runner(work, 2)
    runner.train()
    path = work / 'iter_2.pth'
    assert path.is_file()
    return path, {k: v.clone() for k, v in runner.model.state_dict().items()}


def test_runner_checkpoint_needs_allowlist(runner_ckpt):
    """Without our allowlist torch's default refuses the Runner checkpoint."""
    code = textwrap.dedent(f'''
        import torch
        try:
            torch.load({str(runner_ckpt[0])!r})
        except Exception as e:
            print('REFUSED', type(e).__name__)
        import s2aformer_mm  # registers the allowlist
        ck = torch.load({str(runner_ckpt[0])!r})
        print('LOADED', sorted(ck))
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'REFUSED UnpicklingError' in out.stdout
    assert "LOADED ['message_hub', 'meta', 'optimizer', 'state_dict']" in out.stdout


def test_resume_and_load_from(runner_ckpt, tmp_path):
    path, weights = runner_ckpt
    resumed = _runner(tmp_path / 'resume', 4, resume=True, load_from=str(path))
    resumed.load_or_resume()
    assert resumed.iter == 2
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, weights[k])
    resumed.train()
    assert resumed.iter == 4
    loaded = _runner(tmp_path / 'load', 2, load_from=str(path))
    loaded.load_or_resume()
    assert loaded.iter == 0
    torch.testing.assert_close(loaded.model.state_dict()['fc.weight'], weights['fc.weight'])


def test_pretrained_prefix_loads_all_backbone_keys(runner_ckpt):
    path, weights = runner_ckpt
    bb = S2AFormer('mini', out_indices=(0, 1, 2, 3), out_norm=True,
                   init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    bb.init_weights()
    own = bb.state_dict()
    loaded = [k for k in own if not k.startswith('out_norm')]
    assert len(loaded) == len([k for k in weights if k.startswith('backbone.')])
    for k in loaded:
        torch.testing.assert_close(own[k], weights['backbone.' + k], msg=k)


def test_missing_keys_are_loud_and_partial_load_is_explicit(runner_ckpt, tmp_path):
    path, weights = runner_ckpt
    ck = torch.load(path)
    del ck['state_dict']['backbone.stages.3.1.ffn.fc2.weight']
    broken = tmp_path / 'broken.pth'
    torch.save(ck, broken)
    cfg = dict(type='Pretrained', checkpoint=str(broken), prefix='backbone.')
    with pytest.raises(KeyError, match=r'(?s)1 missing keys: stages\.3\.1\.ffn\.fc2\.weight.*strict=False'):
        S2AFormer('mini', init_cfg=cfg).init_weights()
    with pytest.raises(KeyError, match='shape mismatches'):
        S2AFormer('t', init_cfg=dict(cfg, checkpoint=str(path))).init_weights()
    bb = S2AFormer('mini', init_cfg=dict(cfg, strict=False))
    bb.init_weights()
    torch.testing.assert_close(bb.state_dict()['stages.0.0.pos.weight'],
                               weights['backbone.stages.0.0.pos.weight'])
    with pytest.raises(FileNotFoundError, match='not found'):
        S2AFormer('mini', init_cfg=dict(cfg, checkpoint=str(tmp_path / 'nope.pth'))).init_weights()


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f'touch {self.target}',))


class _EvilGetattr:
    """getattr on an allowlisted class reaching past its statistics methods: a broad
    ``builtins.getattr`` allowlist entry would let this through."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.mark.parametrize('zipped', [True, False], ids=['zip', 'legacy'])
@pytest.mark.parametrize('payload', [_Evil, _EvilGetattr])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, payload, zipped):
    target = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': payload(target)}, evil,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        safe_load(str(evil))
    assert not target.exists()


def test_truncated_checkpoint_names_file(runner_ckpt, tmp_path):
    data = runner_ckpt[0].read_bytes()
    bad = tmp_path / 'truncated.pth'
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match='truncated.pth.*corrupt or truncated'):
        safe_load(str(bad))


@pytest.mark.parametrize('content', [b'garbage\n', b'', bytes(range(256)),
                                     pickle.dumps({'state_dict': {}})],
                         ids=['text', 'empty', 'binary', 'plain-pickle'])
def test_file_that_is_not_a_checkpoint_is_not_called_unsafe(tmp_path, content):
    path = tmp_path / 'x.pth'
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError, match=r"x\.pth' is not a PyTorch checkpoint") as e:
        safe_load(str(path))
    assert 'weights_only' not in str(e.value) and 'Refusing' not in str(e.value)


def test_deploy_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / 'deploy.pth'
    torch.save({'state_dict': {'backbone.stem.0.0.conv.weight': torch.zeros(1)},
                'meta': {'s2aformer_deploy': True, 'source': 'iter_4.pth'}}, path)
    match = r"(?s)deploy-form checkpoint.*load_deploy_model.*'iter_4\.pth'"
    with pytest.raises(CheckpointMismatchError, match=match):
        check_model_checkpoint(Toy(), str(path))
    with pytest.raises(CheckpointMismatchError, match=match):
        S2AFormer('mini', init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()


def test_model_mismatch_asks_for_the_training_config(runner_ckpt, tmp_path):
    ck = torch.load(runner_ckpt[0])
    del ck['state_dict']['fc.bias']
    path = tmp_path / 'other.pth'
    torch.save(ck, path)
    with pytest.raises(CheckpointMismatchError,
                       match=r'(?s)1 missing keys: fc\.bias.*same model and variant'):
        check_model_checkpoint(Toy(), str(path))


def test_atomic_save_survives_sigkill(tmp_path):
    """A process SIGKILLed in the middle of saving leaves the previous checkpoint intact."""
    import signal
    target = tmp_path / 'ckpt.pth'
    torch.save({'step': 0, 'w': torch.zeros(3)}, target)
    code = textwrap.dedent(f'''
        import os, time, torch, s2aformer_mm
        from mmengine.runner.checkpoint import save_checkpoint
        def stall(fd):  # the new bytes are written; stop here, before the rename
            print('MIDSAVE', flush=True)
            time.sleep(60)
        os.fsync = stall
        save_checkpoint({{'step': 1, 'w': torch.ones(1 << 20)}}, {str(target)!r},
                        backend_args=dict(backend='atomic_local'))
    ''')
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # skip mmengine's log lines
            if line.strip() == 'MIDSAVE':
                break
        else:
            raise AssertionError('the save never reached its write stage')
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ck = safe_load(str(target))
    assert ck['step'] == 0 and torch.equal(ck['w'], torch.zeros(3))
