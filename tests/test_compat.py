"""Import-time stack checks give errors that name the problem and the fix."""
import re
import subprocess
import sys
import textwrap

import pytest

from s2aformer_mm.testing import ENV, REPO


def _import_with(patch: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(patch) + '\nimport s2aformer_mm\n'
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)


def test_mmcv_without_ops():
    out = _import_with('''
        import importlib.util
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == 'mmcv._ext' else real(name, *a)
    ''')
    assert out.returncode != 0
    assert 'without its compiled ops' in out.stderr and 'MMCV_WITH_OPS=1' in out.stderr


@pytest.mark.parametrize('fake, expected', [('2.2.0', 'mmcv 2.2.0 is incompatible'),
                                             (None, 'mmcv is not installed')])
def test_mmcv_version(fake, expected):
    out = _import_with(f'''
        import importlib.metadata as md
        real = md.version
        def version(name):
            if name == 'mmcv':
                if {fake!r} is None:
                    raise md.PackageNotFoundError(name)
                return {fake!r}
            return real(name)
        md.version = version
    ''')
    assert out.returncode != 0
    assert expected in out.stderr and 'tools/setup_env.sh' in out.stderr


def test_torch_too_old():
    out = _import_with('''
        import torch
        del torch.library.custom_op
    ''')
    assert out.returncode != 0
    assert 'too old' in out.stderr and 'torch.library.custom_op' in out.stderr
    assert 'torch==2.14.1' in out.stderr
    from s2aformer_mm.compat import TORCH_MIN
    assert f'torch >= {TORCH_MIN} ' in out.stderr


def test_torch_whose_is_exporting_misreports_under_compile_is_refused():
    out = _import_with('''
        import torch
        torch.__version__ = '2.11.0+cpu'
    ''')
    assert out.returncode != 0
    assert 'torch 2.11.0+cpu is too old' in out.stderr and 'is_exporting()' in out.stderr
    assert 'torch >= 2.12 ' in out.stderr


def test_setup_py_states_the_torch_bound_the_import_check_names():
    from s2aformer_mm.compat import TORCH_MIN
    setup_py = (REPO / 'setup.py').read_text()
    assert re.findall(r"'torch>=([0-9.]+)'", setup_py) == [TORCH_MIN]


def test_compatible_stack_imports():
    out = _import_with('')
    assert out.returncode == 0, out.stderr


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
