"""Import-time stack checks give errors that name the problem and the fix."""
import re
import subprocess
import sys
import textwrap

import pytest

from s2aformer_mm.compat import LINES, installed_line
from s2aformer_mm.integrations import PINS
from s2aformer_mm.testing import ENV, REPO

#: the OpenMMLab line this venv holds, and the other one
LINE = installed_line()
OTHER = next(line for line in LINES if line != LINE)


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


MMCV, _, _, MMCV_MAX = LINES[LINE]['mmcv']


@pytest.mark.parametrize('fake, expected', [(MMCV_MAX, f'{MMCV} {MMCV_MAX} is incompatible'),
                                             (None, 'mmcv is not installed')])
def test_mmcv_version(fake, expected):
    out = _import_with(f'''
        import importlib.metadata as md
        real = md.version
        def version(name):
            if name == {MMCV!r}:
                if {fake!r} is None:
                    raise md.PackageNotFoundError(name)
                return {fake!r}
            return real(name)
        md.version = version
    ''')
    assert out.returncode != 0
    assert expected in out.stderr and 'tools/setup_env.sh' in out.stderr
    assert f'{MMCV}=={LINES[LINE]["mmcv"][1]}' in out.stderr or fake is None


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
    dist = LINES[LINE]['mmseg'][0]
    code = textwrap.dedent(f'''
        import importlib.metadata as md
        real = md.version
        md.version = lambda name: '0.30.0' if name == {dist!r} else real(name)
        import s2aformer_mm
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert proc.returncode != 0
    assert f'{dist} 0.30.0' in proc.stderr and PINS[LINE]['mmseg'].split()[0] in proc.stderr


# ---- the two OpenMMLab lines (upstream, onedl): told apart by distribution name

def _fake_metadata(installed: dict) -> str:
    """Code that makes importlib.metadata report ``installed`` ({distribution: version})
    for the OpenMMLab distributions of both lines, and the truth for anything else."""
    ours = sorted({d for libs in LINES.values() for d, *_ in libs.values()})
    return f'''
        import importlib.metadata as md
        real = md.version
        def version(name):
            if name in {ours!r}:
                if name not in {installed!r}:
                    raise md.PackageNotFoundError(name)
                return {installed!r}[name]
            return real(name)
        md.version = version
    '''


def _check_with(installed: dict) -> subprocess.CompletedProcess:
    """Run compat's checks (loaded on its own, as tools/setup_env.sh does, and with mmcv's
    ops reported present, so that no library is imported) against the faked metadata."""
    code = textwrap.dedent(_fake_metadata(installed)) + textwrap.dedent(f'''
        import importlib.util as u
        real_find_spec = u.find_spec
        u.find_spec = lambda name, *a: True if name == 'mmcv._ext' else real_find_spec(name, *a)
        s = u.spec_from_file_location('compat', {str(REPO / 's2aformer_mm' / 'compat.py')!r})
        compat = u.module_from_spec(s)
        s.loader.exec_module(compat)
        compat.check_stack()
        for lib in ('mmpretrain', 'mmseg', 'mmdet'):
            compat.check_openmmlab(lib, 'PIP_SPEC')
        print(compat.installed_line())
    ''')
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=ENV, timeout=120)


def _tested(line: str, **versions) -> dict:
    """{distribution: version} of ``line``'s tested versions, some replaced by import name."""
    return {dist: versions.get(lib, tested) for lib, (dist, tested, *_) in LINES[line].items()}


@pytest.mark.parametrize('line', sorted(LINES))
def test_each_lines_tested_versions_are_accepted(line):
    out = _check_with(_tested(line))
    assert out.returncode == 0 and out.stdout.split() == [line], out.stderr


@pytest.mark.parametrize('line, lib, bad, allowed', [
    ('upstream', 'mmdet', '3.4.0', '3.3.0 <= mmdet < 3.4.0'),
    ('onedl', 'mmdet', '3.6.0', '3.5.1 <= onedl-mmdetection < 3.6.0'),
    ('onedl', 'mmseg', '1.2.2', '1.4.2 <= onedl-mmsegmentation < 1.5.0'),
    ('onedl', 'mmengine', '0.10.7', '0.10.12 <= onedl-mmengine < 0.11'),
    ('onedl', 'mmcv', '2.1.0', '2.3.6 <= onedl-mmcv < 2.4.0'),
])
def test_an_untested_version_of_either_line_is_refused(line, lib, bad, allowed):
    out = _check_with(_tested(line, **{lib: bad}))
    assert out.returncode != 0
    message = out.stderr.strip().splitlines()[-1]
    assert f'{LINES[line][lib][0]} {bad} ' in message and allowed in message, out.stderr
    assert 'S2A_STACK=onedl bash tools/setup_env.sh' in message or line == 'upstream'


@pytest.mark.parametrize('mmcv_line', sorted(LINES))
def test_a_mix_of_the_lines_is_refused_with_the_fix(mmcv_line):
    """mmdet from one line, mmcv (and the rest) from the other: one line naming both and the
    fix, judged from mmcv's line (the compiled part)."""
    other = next(line for line in LINES if line != mmcv_line)
    installed = _tested(mmcv_line)
    del installed[LINES[mmcv_line]['mmdet'][0]]
    installed[LINES[other]['mmdet'][0]] = LINES[other]['mmdet'][1]
    out = _check_with(installed)
    assert out.returncode != 0
    message = out.stderr.strip().splitlines()[-1]
    wrong, right = LINES[other]['mmdet'], LINES[mmcv_line]['mmdet']
    assert message.startswith(f'ImportError: {wrong[0]} {wrong[1]} ({other} line) cannot run '
                              f'with {LINES[mmcv_line]["mmengine"][0]}'), message
    assert f'{LINES[mmcv_line]["mmcv"][0]} {LINES[mmcv_line]["mmcv"][1]}, ' in message
    assert f'({mmcv_line} line): the upstream and the onedl OpenMMLab packages share' in message
    assert f'pip uninstall -y {wrong[0]} && pip install --no-deps {right[0]}=={right[1]}' in message
    venv = 'S2A_VENV=<new venv> bash tools/setup_env.sh'
    assert (f'S2A_STACK=onedl {venv}' if mmcv_line == 'onedl' else f'"{venv}"') in message


def test_one_import_name_from_both_lines_is_refused():
    installed = dict(_tested('onedl'), mmcv='2.1.0')
    out = _check_with(installed)
    assert out.returncode != 0
    assert 'mmcv is installed twice, as mmcv 2.1.0 and onedl-mmcv 2.3.6' in out.stderr


def test_import_refuses_a_mix_in_this_venv():
    """The real import: this venv's mmdet reported as the other line's."""
    mine, theirs = LINES[LINE]['mmdet'], LINES[OTHER]['mmdet']
    out = _import_with(f'''
        import importlib.metadata as md
        real = md.version
        def version(name):
            if name == {mine[0]!r}:
                raise md.PackageNotFoundError(name)
            return {theirs[1]!r} if name == {theirs[0]!r} else real(name)
        md.version = version
    ''')
    assert out.returncode != 0
    assert f'{theirs[0]} {theirs[1]} ({OTHER} line) cannot run with' in out.stderr, out.stderr


def test_setup_script_pins_the_versions_the_import_check_accepts():
    """tools/setup_env.sh installs, and setup.py's extras ('all', 'onedl') name, each line's
    tested versions (compat.LINES)."""
    script = (REPO / 'tools' / 'setup_env.sh').read_text()
    setup_py = (REPO / 'setup.py').read_text()
    for line, libs in LINES.items():
        for lib, (dist, tested, *_) in libs.items():
            assert f"'{dist}=={tested}'" in setup_py, (line, dist)
            if lib == 'mmcv':
                assert re.search(rf'MMCV_DIST={dist} MMCV_VERSION="{re.escape(tested)}"', script)
            else:
                assert re.search(rf'(?<![\w-]){dist}=={re.escape(tested)}(?![\w.])', script), \
                    (line, dist)


def _setup(**env):
    """Run tools/setup_env.sh with ``env`` on top of the tests' environment."""
    return subprocess.run(['bash', 'tools/setup_env.sh'], cwd=REPO, env=dict(ENV, **env),
                          capture_output=True, text=True, timeout=60)


def _script(path, body):
    """An executable shell script at ``path`` (a fake interpreter)."""
    path.write_text('#!/bin/sh\n' + body)
    path.chmod(0o755)
    return path


def _fake_venv(tmp_path):
    """A venv whose python is this interpreter (so it holds this venv's line) and refuses
    ``-m pip``: the set-up must stop before installing anything."""
    bin_dir = tmp_path / 'venv' / 'bin'
    bin_dir.mkdir(parents=True)
    _script(bin_dir / 'python', f'[ "$1" = -m ] && {{ echo "pip refused" >&2; exit 3; }}\n'
                                f'exec {sys.executable} "$@"\n')
    return tmp_path / 'venv'


def test_setup_refuses_to_switch_lines_in_an_existing_venv(tmp_path):
    venv = _fake_venv(tmp_path)
    proc = _setup(S2A_STACK=OTHER, S2A_VENV=str(venv))
    assert proc.returncode == 1, proc.stderr
    assert f'venv {venv} holds the {LINE} line' in proc.stderr
    assert f'S2A_STACK={OTHER} asks for the {OTHER} line' in proc.stderr
    assert 'S2A_VENV=/path/to/new-venv' in proc.stderr and f'rm -rf {venv}' in proc.stderr
    assert 'pip refused' not in proc.stderr


def test_setup_refuses_an_unknown_stack(tmp_path):
    proc = _setup(S2A_STACK='openmmlab', S2A_VENV=str(tmp_path / 'venv'))
    assert proc.returncode == 1 and 'S2A_STACK=openmmlab is not a stack' in proc.stderr
    assert not (tmp_path / 'venv').exists()


@pytest.mark.parametrize('stack, python, reason', [
    ('upstream', '3.13', "mmcv 2.1.0's setup.py reads its version through exec() into locals()"),
    ('onedl', '3.14', 'the onedl line is tested on Python 3.10 - 3.13'),
    ('upstream', '3.9', 'PyPI has no torch >= 2.12 for it'),
])
def test_setup_refuses_an_untested_python_for_the_line_with_the_reason(tmp_path, stack, python,
                                                                       reason):
    fake = _script(tmp_path / f'python{python}', f'echo {python}\n')
    proc = _setup(S2A_STACK=stack, S2A_PYTHON=str(fake), S2A_VENV=str(tmp_path / 'venv'))
    assert proc.returncode == 1 and reason in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1   # one line
    assert not (tmp_path / 'venv').exists()


def test_setup_takes_the_python_version_from_an_existing_venv(tmp_path):
    """An existing venv's interpreter decides (it keys the mmcv wheel cache), not S2A_PYTHON."""
    bin_dir = tmp_path / 'venv' / 'bin'
    bin_dir.mkdir(parents=True)
    _script(bin_dir / 'python',  # an empty Python 3.13 venv that refuses to install
            'case "$1" in -c) echo 3.13 ;; -) cat >/dev/null; echo none ;; *) exit 3 ;; esac\n')
    boot = _script(tmp_path / 'python3.12', 'echo 3.12\n')
    proc = _setup(S2A_STACK='upstream', S2A_PYTHON=str(boot), S2A_VENV=str(tmp_path / 'venv'))
    assert proc.returncode == 1 and 'Python 3.13 is not supported on the upstream line' in \
        proc.stderr, proc.stderr
