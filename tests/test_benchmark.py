"""tools/analysis/benchmark.py: the peer selection and a tiny end-to-end run (no
timing assertions: the benchmark prints figures, tests only check it works)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
