"""CPU allocator settings (s2aformer_mm/runtime.py)."""
import os
import subprocess
import sys

import pytest

CODE = ('from s2aformer_mm.runtime import tune_cpu_allocator as t; '
        "a = t('train'); b = t('inference'); assert a == b, (a, b); print(a)")  # once per process


def _run(env_value=None):
    env = dict(os.environ)
    env.pop('S2A_DEFAULT_ALLOCATOR', None)
    if env_value is not None:
        env['S2A_DEFAULT_ALLOCATOR'] = env_value
    return subprocess.run([sys.executable, '-c', CODE], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt is Linux-only')
def test_tune_cpu_allocator_applies_once_and_says_so():
    assert _run().startswith('CPU allocator (train): glibc keeps freed blocks < 64 MiB')


def test_tune_cpu_allocator_opt_out():
    assert 'glibc defaults (S2A_DEFAULT_ALLOCATOR is set)' in _run('1')
