"""Checkpoint loading: Pretrained with prefix, loud missing keys, Runner round trip
under torch's weights_only=True default, and refusal of code-executing pickles."""
import os
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import HistoryBuffer, MessageHub
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
    with pytest.raises(KeyError,
                       match=r'(?s)1 missing keys: stages\.3\.1\.ffn\.fc2\.weight.*strict=False'):
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


class _EvilEval(_Evil):
    def __reduce__(self):
        return (eval, (f'open({str(self.target)!r}, "w").close()',))


class _UnfixedPickler(pickle.Pickler):
    """Names globals by their Python 3 modules: protocol 2 would otherwise spell
    ``subprocess`` as Python 2's ``commands``, which no unpickler resolves."""

    def __init__(self, file, protocol=None, **kw):
        super().__init__(file, protocol, fix_imports=False, **kw)


class _EvilSubprocess(_Evil):
    pickle_module = types.SimpleNamespace(
        __name__='pickle', Pickler=_UnfixedPickler,
        dump=lambda obj, f, protocol=None: _UnfixedPickler(f, protocol).dump(obj))

    def __reduce__(self):
        return (subprocess.call, (['touch', str(self.target)],))


@pytest.mark.parametrize('zipped', [True, False], ids=['zip', 'legacy'])
@pytest.mark.parametrize('payload', [_Evil, _EvilGetattr, _EvilEval, _EvilSubprocess])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, payload, zipped):
    target = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': payload(target)}, evil,
               pickle_module=getattr(payload, 'pickle_module', pickle),
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        safe_load(str(evil))
    assert not target.exists()


@pytest.mark.parametrize('payload', [_Evil, _EvilGetattr, _EvilEval])
def test_mmengine_own_loaders_refuse_malicious_pickle(tmp_path, payload):
    """mmengine's entry points for local files go through safe_load on either OpenMMLab
    line. (onedl-mmengine 0.10.12's own loader retries a refused file with
    weights_only=False, i.e. it would run this payload; its allowlist also holds the
    unrestricted builtins.getattr.)"""
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, load_checkpoint
    target = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': payload(target)}, evil)
    for load in (lambda: _load_checkpoint(str(evil)),
                 lambda: CheckpointLoader.load_checkpoint(str(evil), map_location='cpu'),
                 lambda: load_checkpoint(torch.nn.Linear(1, 1), str(evil))):
        with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
            load()
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


# Empty numpy arrays, and so empty HistoryBuffers, hold b'' as their data, which
# torch.save (pickle protocol 2) writes as a call of builtins.bytes().
_EMPTY_ARRAYS = {dt: np.zeros(0, dtype=dt) for dt in
                 ['f8', 'f4', 'f2', 'i8', 'u1', 'bool', 'c16', 'U', 'S', 'V4', 'M8[s]']}
_EMPTY_ARRAYS.update({'2d': np.zeros((3, 0)), 'structured': np.zeros(0, 'f4,i4'),
                      '0d': np.array(1.5), 'bytes_': np.bytes_(b''), 'bare': np.array([])})


def _assert_same(a, b, where='ckpt'):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f'{where}[{k!r}]')
    elif isinstance(a, HistoryBuffer):
        assert type(b) is HistoryBuffer and a.max_length == b.max_length, where
        _assert_same(a._log_history, b._log_history, f'{where}._log_history')
        _assert_same(a._count_history, b._count_history, f'{where}._count_history')
    elif isinstance(a, np.ndarray):
        assert type(b) is np.ndarray and (a.dtype, a.shape) == (b.dtype, b.shape), where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, msg=where)
    else:
        assert type(a) is type(b) and a == b, where


@pytest.mark.parametrize('zipped', [True, False], ids=['zip', 'legacy'])
def test_empty_history_buffer_and_empty_arrays_round_trip(tmp_path, zipped):
    ck = {'meta': {'iter': 0}, 'state_dict': {'fc.weight': torch.randn(2, 3)},
          'message_hub': {'log_scalars': {'train/loss': HistoryBuffer(),
                                          'train/lr': HistoryBuffer([1e-3, 2e-3], [1, 1])},
                          'runtime_info': {'iter': 0}},
          'arrays': _EMPTY_ARRAYS, 'empty_bytes': b''}
    path = tmp_path / 'empty.pth'
    torch.save(ck, path, _use_new_zipfile_serialization=zipped)
    loaded = safe_load(str(path))
    _assert_same(ck, loaded)
    hb = loaded['message_hub']['log_scalars']['train/loss']
    hb.update(2.0)  # the statistics methods (restored through getattr) work
    assert hb.mean() == 2.0 and hb.current() == 2.0


def test_mmengine_save_checkpoint_with_empty_message_hub_buffer(tmp_path):
    """mmengine's save_checkpoint of a MessageHub state dict holding an empty
    HistoryBuffer loads through safe_load and through mmengine's own loader (which
    importing s2aformer_mm routes to safe_load), and the hub resumes from it."""
    from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint
    keys = ('train/loss', 'train/lr', 'iter')
    hub = MessageHub('test_empty_buffer', runtime_info={'iter': 0},
                     log_scalars={'train/loss': HistoryBuffer(),
                                  'train/lr': HistoryBuffer([1e-3], [1])},
                     resumed_keys=dict.fromkeys(keys, True))
    path = tmp_path / 'iter_0.pth'
    save_checkpoint({'meta': {'iter': 0}, 'state_dict': {'w': torch.ones(2)},
                     'message_hub': hub.state_dict()}, str(path))
    for loaded in (safe_load(str(path)), _load_checkpoint(str(path))):
        _assert_same(hub.state_dict(), loaded['message_hub'])
        resumed = MessageHub('test_empty_buffer_resumed')
        resumed.load_state_dict(loaded['message_hub'])
        assert len(resumed.log_scalars['train/loss']._log_history) == 0
        assert resumed.get_scalar('train/lr').current() == 1e-3


class _BytesOf:
    """Pickled as a call of builtins.bytes with the given arguments."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (bytes, self.args)


_ALLOCATES = 'which would allocate that many zero bytes'


@pytest.mark.parametrize('zipped', [True, False], ids=['zip', 'legacy'])
@pytest.mark.parametrize('args, named', [
    ((10 ** 12,), rf'bytes\(1000000000000\), {_ALLOCATES}'),
    ((1 << 26,), rf'bytes\(67108864\), {_ALLOCATES}'),
    # (torch's unpickler reads integers of at most 255 bytes, LONG1)
    ((2 ** 2000,), rf'bytes\(<2001-bit integer>\), {_ALLOCATES}'),
    (('abc', 'latin1'), r'bytes\(str, str\); only bytes\(\) and copies of bytes'),
], ids=['1e12', '64MiB', 'huge-int', 'str'])
def test_bytes_of_a_size_is_refused_and_allocates_nothing(tmp_path, args, named, zipped):
    """builtins.bytes is allowed only as bytes() (b'') or a copy of bytes: bytes(N)
    would allocate N bytes chosen by the file (a memory bomb)."""
    path = tmp_path / 'bomb.pth'
    torch.save({'state_dict': {}, 'x': _BytesOf(*args)}, path,
               _use_new_zipfile_serialization=zipped)
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeCheckpointError, match=rf"bomb\.pth'.*{named}"):
            safe_load(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f'{peak} bytes allocated while refusing'
