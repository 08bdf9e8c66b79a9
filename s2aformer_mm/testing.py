"""Helpers shared by the test files (``tests/``) and ``tools/reliability/soak.py``:
running the repository's tools in subprocesses and reading what a run left behind
(like ``mmdet.testing`` / ``mmengine.testing``). The tools and configs are those of a
checkout, :data:`REPO`."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from .checkpoint import safe_load
from .compat import installed_line
from .models import S2AFormer

#: the checkout this package is imported from (tools/, configs/)
REPO = Path(__file__).resolve().parents[1]
#: one thread per process: tests and soak runs share 2 cores. The scripts the tests launch
#: use this interpreter's environment, not the venv at .venv, which may hold the other
#: OpenMMLab line: S2A_PYTHON for tools/dist_*.sh and slurm_*.sh, and in a venv S2A_VENV
#: and S2A_STACK for the set-up that run_demo.sh / run_tests.sh check first.
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1',
           S2A_PYTHON=sys.executable)
if sys.prefix != sys.base_prefix:
    ENV.update(S2A_VENV=sys.prefix, S2A_STACK=installed_line())
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
#: skips a test where the optional ONNX packages are missing
needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ('onnx', 'onnxruntime', 'onnxscript')),
    reason='onnx/onnxscript/onnxruntime not installed (bash tools/setup_env.sh installs them)')
#: a one-block-per-stage S2AFormer for fast model tests
TINY_ARCH = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128], num_heads=[1, 2, 4, 8])


def run(cmd, expect_ok: bool = True, timeout: float = 420, env=None) -> Tuple[int, str]:
    """Run ``cmd`` in :data:`REPO`; return (exit code, stdout + stderr). With
    ``expect_ok`` a non-zero exit fails the test with the output's tail."""
    cmd = [str(c) for c in cmd]
    proc = subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    if expect_ok:
        assert proc.returncode == 0, f'{" ".join(cmd)} failed:\n{out[-6000:]}'
    return proc.returncode, out


def start_job(cmd, env=None) -> 'ProcessJob':
    """Start ``cmd`` in :data:`REPO` as a :class:`ProcessJob` (to watch and kill)."""
    return ProcessJob(cmd, cwd=REPO, env=env or ENV)


def tool(name: str, *args, **kwargs) -> Tuple[int, str]:
    """Run ``tools/<name>.py`` with this interpreter (:func:`run`'s keywords)."""
    return run([sys.executable, f'tools/{name}.py', *args], **kwargs)


def loader_opts(root, batch: int = 2, extra=()) -> List[str]:
    """``--cfg-options`` pointing every loader at ``root``, in this process, batch
    ``batch`` (val/test: 2), logging every iteration."""
    opts = []
    for loader in LOADERS:
        opts += [f'{loader}.dataset.data_root={root}', f'{loader}.num_workers=0',
                 f'{loader}.persistent_workers=False']
    opts += [f'train_dataloader.batch_size={batch}', 'val_dataloader.batch_size=2',
             'test_dataloader.batch_size=2', 'default_hooks.logger.interval=1', *extra]
    return opts


def test_metrics(out: str) -> Dict:
    """The metrics ``tools/test.py`` printed."""
    match = re.search(r'\[s2aformer\] test metrics: (\{.*\})', out)
    assert match, f'no metrics line in the output:\n{out[-3000:]}'
    return json.loads(match.group(1))


test_metrics.__test__ = False  # a helper, not a test


def assert_one_line_error(rc: int, out: str, *fragments: str) -> None:
    """A refusal as the tools print it: non-zero exit, one ``[s2aformer] ERROR:`` line,
    no traceback, and each of ``fragments`` in the output."""
    assert rc != 0 and out.count('[s2aformer] ERROR: ') == 1, out[-3000:]
    assert 'Traceback' not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, (fragment, out[-3000:])


def dumped_config(work_dir, config) -> Config:
    """The config copy the Runner saved in ``work_dir``."""
    return Config.fromfile(Path(work_dir) / Path(config).name)


def scalars(work) -> List[List[Dict]]:
    """One list of scalar records (vis_data/scalars.json) per run in ``work``, oldest first."""
    runs = sorted(Path(work).glob('2*/vis_data/scalars.json'))
    return [[json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in runs]


def train_losses(records) -> Dict[int, float]:
    return {r['iter']: r['loss'] for r in records if 'loss' in r and 'iter' in r}


def val_metrics(records) -> List[Dict]:
    return [{k: v for k, v in r.items() if k in ('aAcc', 'mIoU', 'mAcc')}
            for r in records if 'mIoU' in r]


def weights(path) -> Dict[str, torch.Tensor]:
    return safe_load(str(path))['state_dict']


def assert_same_weights(a, b) -> None:
    """Bitwise equal state dicts in checkpoints ``a`` and ``b``."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, (f'{len(different)} tensors differ, e.g. {different[:3]}; max abs '
                           f'diff {max((wa[k] - wb[k]).abs().max().item() for k in different)}')


class ProcessJob:
    """A subprocess whose merged stdout/stderr is collected by a thread (and copied
    to ``log`` if given), so the caller can watch it -- and the file system -- and
    SIGKILL it at a chosen moment."""

    def __init__(self, cmd, cwd, env, log=None):
        self.cmd = [str(c) for c in cmd]
        self.log = open(log, 'a') if log else None
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.log:
                self.log.write(line)
        if self.log:
            self.log.flush()

    @property
    def out(self):
        return ''.join(self.lines)

    def wait_until(self, condition, timeout=180, poll=0.001):
        """Poll ``condition()`` until it is true; fail if the job ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                self.reader.join(5)
                if condition():
                    return
                raise AssertionError(f'job ended (rc {self.proc.returncode}) before the '
                                     f'awaited moment:\n{self.out[-4000:]}')
            time.sleep(poll)
        self.kill()
        raise AssertionError(f'timed out after {timeout}s:\n{self.out[-4000:]}')

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.finish(30)

    def finish(self, timeout=240):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(
                f'job did not end within {timeout}s:\n{self.out[-4000:]}') from None
        self.reader.join(10)
        return self.proc.returncode


def assert_all_close(outputs, references, tol: float = 1e-4) -> None:
    """Each pair of tensors equal within ``tol`` (absolute and relative)."""
    for u, v in zip(outputs, references, strict=True):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


def randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and norm affines, so a wrong fold cannot hide."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - .5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + .5)
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + .5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * .4 - .2)
    return model


def paper_classifier(arch, num_classes: int = 10) -> torch.nn.Module:
    """mmpretrain ``ImageClassifier`` with the paper's two-head ``S2AFormerClsHead``, in
    eval mode, with distinct heads and :func:`randomise_norms` (for deploy-form tests)."""
    from mmpretrain.registry import MODELS  # an optional library: only when asked for
    channels = (arch if isinstance(arch, dict) else S2AFormer.arch_zoo[arch])['channels']
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='S2AFormer', arch=arch),
            head=dict(type='S2AFormerClsHead', num_classes=num_classes,
                      in_channels=channels[-1])))
    with torch.no_grad():  # distinct heads, so merging them is actually tested
        model.head.head_dist.weight.normal_(0, .05)
        model.head.head_dist.bias.normal_(0, .1)
        model.head.head.bias.normal_(0, .1)
    return randomise_norms(model).eval()
