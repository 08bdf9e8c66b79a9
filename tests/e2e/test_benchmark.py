"""tools/analysis/benchmark.py: the peer selection and a tiny end-to-end run (no
timing assertions: the benchmark prints figures, tests only check it works)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from s2aformer_mm.testing import REPO as REPO_ROOT

REPO = str(REPO_ROOT)
SCRIPT = os.path.join(REPO, 'tools', 'analysis', 'benchmark.py')


@pytest.fixture(scope='module')
def bench():
    spec = importlib.util.spec_from_file_location('s2a_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table3_peers_are_within_half_a_point(bench):
    xs = bench.table3_peers('xs')  # S2AFormer-XS: 78.9 %
    assert {'efficientformer_l1', 'fastvit_t12', 'starnet_s4', 'repvit_m0_9'} <= set(xs)
    assert 'efficientvit_m5' not in xs and 'deit_tiny_patch16_224' not in xs
    assert bench.table3_peers('t') == ['poolformer_s12', 'shvit_s3']  # 77.2 is exactly 0.5 off
    for arch in bench.S2A_TOP1:
        for name in bench.table3_peers(arch):
            assert abs(bench.TABLE3_TIMM[name][2] - bench.S2A_TOP1[arch]) <= 0.5 + 1e-9


def test_benchmark_runs_and_writes_rows(tmp_path):
    out = tmp_path / 'rows.json'
    proc = subprocess.run(
        [sys.executable, SCRIPT, '--variants', 'mini', '--batch', '2', '--shape', '64', '64',
         '--warmup', '0', '--rounds', '1', '--threads', '1', '--json', str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'fp32 GEMM' in proc.stdout and 's2aformer-mini' in proc.stdout
    result = json.loads(out.read_text())
    assert result['gemm_gflops'] >= result['matmul_gflops'] > 0
    forms = {r['form']: r for r in result['rows']}
    assert set(forms) == {'train-form eval', 'deploy'}
    for row in forms.values():
        assert row['images_per_s'] > 0 and row['gmacs'] > 0 and 0 < row['gemm_fraction']


def _plan(bench, device, *argv):
    """(task, train, batch, label) of the dense/training children the CLI would start."""
    args = bench.parse_args(list(argv))
    return [(s['task'], s['train'], s['batch'], label)
            for s, label in bench.dense_plan(args, bench.torch.device(device))]


def test_dense_tasks_select_training_steps_too(bench):
    assert _plan(bench, 'cpu', '--dense', '--train', '--dense-tasks', 'semantic-fpn') == [
        ('semantic-fpn', False, 1, 'inference train-form eval'),
        ('semantic-fpn', False, 1, 'inference deploy'),
        ('semantic-fpn', True, 2, 'train step')]
    # classification is selectable for --train; --dense has no classification row
    assert _plan(bench, 'cpu', '--dense', '--train', '--dense-tasks', 'classification',
                 'mask-rcnn') == [
        ('mask-rcnn', False, 1, 'inference train-form eval'),
        ('mask-rcnn', False, 1, 'inference deploy'),
        ('classification', True, 16, 'train step'), ('mask-rcnn', True, 1, 'train step')]
    # defaults unchanged: inference of the three dense models, training of cls, FPN, RetinaNet
    default = _plan(bench, 'cpu', '--dense', '--train')
    assert [t for t, train, _, _ in default if not train] == [
        'semantic-fpn', 'semantic-fpn', 'retinanet', 'retinanet', 'mask-rcnn', 'mask-rcnn']
    assert [(t, b) for t, train, b, _ in default if train] == [
        ('classification', 16), ('semantic-fpn', 2), ('retinanet', 1)]


def test_amp_dtype_matches_training_tools(bench):
    torch = bench.torch
    assert bench.amp_dtype('cuda') == torch.float16 and bench.amp_dtype('cpu') == torch.bfloat16
    for device, name in (('cuda', 'fp16'), ('cpu', 'bf16')):
        labels = [label for *_, label in _plan(bench, device, '--train', '--amp',
                                               '--dense-tasks', 'retinanet')]
        assert labels == ['train step', f'train step {name} autocast']


def test_cpu_allocator_tuned_only_when_timing_on_cpu(bench, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, 'tune_cpu_allocator', lambda use: calls.append(use) or 'tuned')
    line = bench.cpu_allocator('cuda', False, 'train')
    assert calls == [] and 'glibc defaults' in line and 'cuda' in line
    assert 'glibc defaults' in bench.cpu_allocator('cpu', True) and calls == []
    assert bench.cpu_allocator('cpu', False, 'train') == 'tuned' and calls == ['train']
