"""Process groups and the DDP / mixed-precision wrappers that decide by the machine
(s2aformer_mm/engine/distributed.py, optim.py); 2-process training runs are in
tests/e2e/test_reliability.py."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config

from s2aformer_mm.testing import ENV, REPO

SEG_CFG = 'configs/mmseg/fpn_s2aformer_mini_ade20k.py'


def test_destroy_distributed_joins_gloo_threads(tmp_path):
    """A live DDP wrapper keeps the gloo group (and its threads) alive past
    destroy_process_group(); freed at interpreter exit it aborted ~1 in 100 finished
    2-process runs. destroy_distributed(runner) must leave no gloo thread behind."""
    code = textwrap.dedent(f'''
        import os, types, torch, torch.distributed as dist
        from s2aformer_mm.engine import DeviceAwareDistributedDataParallel, destroy_distributed
        def gloo_threads():
            names = [open(f'/proc/self/task/{{t}}/comm').read().strip()
                     for t in os.listdir('/proc/self/task')]
            return sorted(n for n in names if 'gloo' in n)
        dist.init_process_group('gloo', init_method='file://{tmp_path}/store', rank=0,
                                world_size=1)
        inner = torch.nn.Linear(2, 2)
        runner = types.SimpleNamespace(model=DeviceAwareDistributedDataParallel(inner))
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


@pytest.mark.parametrize('cuda', [True, False], ids=['cuda', 'cpu'])
def test_a_cpu_saved_config_on_cuda_chooses_the_gpu_settings(monkeypatch, cuda):
    """The source config (what a CPU run saves, tests/e2e/test_reliability.py) on a machine
    with CUDA (simulated): nccl, mmengine's DDP with the rank's device id, fp16
    AmpOptimWrapper with dynamic loss scaling; without CUDA gloo, no device ids, bf16.
    (``with_cp='auto'`` on GPUs: tests/models/test_s2aformer.py.)"""
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import AmpOptimWrapper
    from mmengine.registry import OPTIM_WRAPPERS

    from s2aformer_mm.engine import distributed as engine_dist
    from s2aformer_mm.engine.optim import BF16AutocastOptimWrapper

    cfg = Config.fromfile(REPO / SEG_CFG)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: int(cuda))
    calls = []
    monkeypatch.setattr(dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: calls.append(backend))
    monkeypatch.setattr(torch.cuda, 'set_device', lambda i: calls.append(f'device {i}'))
    for key, value in dict(RANK=0, WORLD_SIZE=1, MASTER_ADDR='127.0.0.1', MASTER_PORT=29999,
                           LOCAL_RANK=0).items():
        monkeypatch.setenv(key, str(value))
    backend = engine_dist.init_distributed('pytorch', cfg.env_cfg.dist_cfg.backend)
    assert calls == (['device 0', 'nccl'] if cuda else ['gloo']), calls
    assert backend == ('nccl' if cuda else 'gloo')

    monkeypatch.setattr('mmengine.optim.optimizer.amp_optimizer_wrapper.is_cuda_available',
                        lambda: cuda)
    model = torch.nn.Linear(2, 2)
    wrapper = OPTIM_WRAPPERS.build(
        dict(type='MixedPrecisionOptimWrapper'),
        default_args=dict(optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    assert type(wrapper) is (AmpOptimWrapper if cuda else BF16AutocastOptimWrapper)
    if cuda:
        assert wrapper._scale_update_param is None  # 'dynamic' loss scaling

    # The wrapper keeps mmengine's device_ids for a module on a GPU (a 'meta' module
    # stands in: not on the CPU) and drops them on the CPU.
    seen = {}
    monkeypatch.setattr(MMDistributedDataParallel, '__init__',
                        lambda self, module, **kw: seen.update(kw, module=module))
    on = torch.nn.Linear(2, 2, device='meta' if cuda else 'cpu')
    engine_dist.DeviceAwareDistributedDataParallel(on, device_ids=[0])
    assert ('device_ids' in seen) == cuda and seen['broadcast_buffers'] is False
