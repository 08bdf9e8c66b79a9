"""A built package carries what a downstream project needs without a checkout:
``configs/``, ``tools/`` and ``model-index.yml`` under ``s2aformer_mm/.mim/``
(``setup.py``'s ``BuildPyWithMim``, ``MANIFEST.in``).

The wheel is built from a copy of the checkout (what a clone holds: tracked and
untracked-but-not-ignored files), so the test neither writes ``build/`` into the
checkout nor sees its ignored outputs. It is installed into a fresh venv that sees the
project venv's site-packages (torch, mmcv, the libraries) through a ``.pth`` line
appended after its own: ``.pth`` files of an appended directory are not processed, so
the checkout's editable finder stays off and ``s2aformer_mm`` is the wheel's (checked).
Everything runs from a directory outside the checkout.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from s2aformer_mm.apis import config_path, configs_dir, model_index_path
from s2aformer_mm.testing import ENV, REPO

#: checkout files a built package leaves out (setup.py: MIM_EXCLUDE)
NOT_SHIPPED = {'tools/setup_env.sh', 'tools/run_demo.sh', 'tools/run_tests.sh'}
MIM = 's2aformer_mm/.mim/'
README_MARKER = '<!-- tests/e2e/test_packaging.py runs this block as written -->'
#: the environment of every command: one thread, nothing that could put the checkout first
CLEAN_ENV = {k: v for k, v in ENV.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}


def _run(cmd, cwd, timeout=300):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=CLEAN_ENV, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f'{" ".join(map(str, cmd))} failed:\n' + (
        proc.stdout + proc.stderr)[-6000:]
    return proc.stdout


def _copy_checkout(dst: Path) -> None:
    """Copy what a clone of the checkout holds (git's view when there is one)."""
    try:
        listed = subprocess.run(
            ['git', '-C', str(REPO), 'ls-files', '-z', '--cached', '--others',
             '--exclude-standard'], capture_output=True, check=True).stdout.decode()
        files = [f for f in listed.split('\0') if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = None
    if files is None:  # no git: skip what .gitignore names
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(
            '.git', '.venv*', 'build', 'dist', 'work_dirs', 'data', 'checkpoints', 'outputs',
            '*.egg-info', '__pycache__', '.pytest_cache', '.ruff_cache', '.mim', '*.pth'))
        return
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)


def _expected_mim(src: Path):
    """What the wheel must carry under .mim/: every file of configs/ and tools/ (less
    NOT_SHIPPED) and model-index.yml."""
    files = {'model-index.yml'}
    for top in ('configs', 'tools'):
        files |= {p.relative_to(src).as_posix() for p in (src / top).rglob('*')
                  if p.is_file() and '__pycache__' not in p.parts and p.suffix != '.pyc'}
    return files - NOT_SHIPPED


def _mim_names(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        return {n[len(MIM):] for n in z.namelist() if n.startswith(MIM)}


def _fresh_venv(path: Path) -> Path:
    """A venv of the base interpreter whose site-packages ends with the project venv's."""
    base = getattr(sys, '_base_executable', None) or sys.executable
    _run([base, '-m', 'venv', path], cwd=path.parent)
    python = path / 'bin' / 'python'
    site = Path(_run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                     cwd=path.parent).strip())
    (site / 'zz_project_venv.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    return python


def _pip(python, *args, cwd):
    return _run([python, '-m', 'pip', '--disable-pip-version-check', '-q', *args], cwd=cwd)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """(source copy, wheel, venv python with the wheel installed, a cwd outside both)."""
    tmp = tmp_path_factory.mktemp('packaging')
    src, out, elsewhere = tmp / 'src', tmp / 'wheel', tmp / 'elsewhere'
    elsewhere.mkdir()
    _copy_checkout(src)
    _pip(sys.executable, 'wheel', '--no-deps', '--no-build-isolation', '--no-index',
         '-w', out, src, cwd=tmp)
    wheel, = out.glob('s2aformer_mm-*.whl')
    python = _fresh_venv(tmp / 'venv')
    _pip(python, 'install', '--no-deps', '--no-index', wheel, cwd=elsewhere)
    return src, wheel, python, elsewhere


def test_wheel_carries_configs_tools_and_index(built):
    src, wheel, _, _ = built
    shipped = _mim_names(wheel)
    expected = _expected_mim(src)
    assert shipped == expected, (sorted(expected - shipped), sorted(shipped - expected))
    # every task config, the demo and the three metafiles, as model-index.yml imports them
    assert {'configs/mmseg/fpn_s2aformer_mini_ade20k.py', 'configs/demo/'
            'fpn_s2aformer_mini_ade20k_demo.py', 'configs/_base_/models/s2aformer_m.py',
            'configs/mmpretrain/metafile.yml', 'configs/mmseg/metafile.yml',
            'configs/mmdet/metafile.yml', 'tools/train.py'} <= shipped
    assert not NOT_SHIPPED & shipped
    # generated in build/ only, never in the source tree
    assert not (src / 's2aformer_mm' / '.mim').exists()


def test_sdist_then_wheel_carries_the_same(built, tmp_path):
    """`python -m build` makes the sdist first and the wheel from it: MANIFEST.in."""
    src, wheel, _, _ = built
    sdist = _run([sys.executable, '-c', 'import sys, setuptools.build_meta as b; '
                  'print(b.build_sdist(sys.argv[1]))', tmp_path / 'sdist'], cwd=src)
    sdist = tmp_path / 'sdist' / sdist.strip().splitlines()[-1]
    _pip(sys.executable, 'wheel', '--no-deps', '--no-build-isolation', '--no-index',
         '-w', tmp_path / 'wheel', sdist, cwd=tmp_path)
    again, = (tmp_path / 'wheel').glob('s2aformer_mm-*.whl')
    assert _mim_names(again) == _mim_names(wheel)


CHECK = r'''
import glob, json, os, sys
import s2aformer_mm
from mmengine.config import Config
from s2aformer_mm.apis import (build_model_from_config, config_path, configs_dir,
                               model_index_path, register_model_index)

out = dict(package=s2aformer_mm.__file__, index=model_index_path(), configs=configs_dir())
root = configs_dir()
out['loaded'] = {}
for f in sorted(glob.glob(os.path.join(root, '**', '*.py'), recursive=True)):
    if os.sep + '_base_' + os.sep in f:
        continue
    cfg = Config.fromfile(f)  # the relative bases and the libraries' (mmseg::, ...)
    # mmengine's text starts each file it read with the file's path
    files = [line for line in cfg.text.splitlines() if line.endswith('.py')
             and os.path.isabs(line)]
    out['loaded'][os.path.relpath(f, root)] = dict(scope=cfg.default_scope, files=files)

cfg = Config.fromfile(sys.argv[1])
files = [line for line in cfg.text.splitlines() if line.endswith('.py') and os.path.isabs(line)]
model = build_model_from_config(cfg)
out['downstream'] = dict(files=files, model=type(model).__name__,
                         backbone=type(model.backbone).__module__,
                         num_classes=model.decode_head.num_classes)
out['classifiers'] = register_model_index()

out['fails'] = {}
for name, text in (('package', sys.argv[2]), ('name', sys.argv[3])):
    with open(name + '.py', 'w') as f:
        f.write(text)
    try:
        Config.fromfile(name + '.py')
        out['fails'][name] = None
    except Exception as e:
        out['fails'][name] = f'{type(e).__name__}: {e}'
print('RESULT ' + json.dumps(out))
'''


def _readme_block():
    text = (REPO / 'README.md').read_text()
    block = re.match(r'\s*```python\n(.*?)```', text[text.index(README_MARKER) +
                                                       len(README_MARKER):], re.S)
    assert block, f'README: no python block after {README_MARKER}'
    return block.group(1)


def test_installed_configs_load_and_a_downstream_config_inherits_them(built):
    """From the fresh venv: every installed config loads with its bases, the README's
    downstream config inherits one and builds its model, and the model index is the
    packaged one."""
    _, _, python, elsewhere = built
    (elsewhere / 'downstream.py').write_text(_readme_block())
    (elsewhere / 'check.py').write_text(CHECK)
    failing = ["_base_ = ['s2aformer_mm::mmseg/fpn_s2aformer_s_ade20k.py']\n",
               "_base_ = [config_path('mmseg/fpn_s2aformer_s_ade20k.py')]\n"]
    log = _run([python, 'check.py', 'downstream.py', *failing], cwd=elsewhere)
    res = json.loads(log[log.rindex('RESULT ') + 7:])

    site = Path(_run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                     cwd=elsewhere).strip())
    pkg = site / 's2aformer_mm'
    assert res['package'] == str(pkg / '__init__.py')  # the wheel's, not the checkout's
    assert res['index'] == str(pkg / '.mim' / 'model-index.yml')
    assert res['configs'] == str(pkg / '.mim' / 'configs')

    task_configs = {p.relative_to(REPO / 'configs').as_posix()
                    for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts}
    assert set(res['loaded']) == task_configs
    for name, got in res['loaded'].items():
        files = got['files']
        assert got['scope'] in ('mmpretrain', 'mmseg', 'mmdet'), name
        assert any(f.startswith(str(pkg / '.mim' / 'configs' / '_base_')) for f in files), name
        assert any(f'{got["scope"]}/.mim/configs/' in f for f in files), (name, files)
        assert not any(f.startswith(str(REPO / 'configs')) for f in files), (name, files)

    down = res['downstream']
    assert down['files'][-1] == str(elsewhere / 'downstream.py')
    assert str(pkg / '.mim' / 'configs' / 'mmseg' / 'fpn_s2aformer_s_ade20k.py') in down['files']
    assert not any(f.startswith(str(REPO / 'configs')) for f in down['files'])
    assert down == dict(down, model='EncoderDecoder', backbone='s2aformer_mm.models.s2aformer',
                        num_classes=19)
    assert 's2aformer-mini_4xb256_in1k' in res['classifiers']

    # what the README says does not work, fails as it says
    assert res['fails']['package'] == ('AssertionError: mmengine does not support to load '
                                       's2aformer_mm config.')
    assert res['fails']['name'].startswith('NameError'), res['fails']['name']


def test_editable_install_uses_the_checkout(built, tmp_path):
    """`pip install -e` (tools/setup_env.sh) builds nothing under .mim/: the package reads
    the checkout's configs/ and model-index.yml."""
    src, _, _, elsewhere = built
    out = _run([sys.executable, '-c', 'import sys, setuptools.build_meta as b; '
                'print(b.build_editable(sys.argv[1]))', tmp_path / 'ewheel'], cwd=src)
    ewheel = tmp_path / 'ewheel' / out.strip().splitlines()[-1]
    assert not _mim_names(ewheel)
    python = _fresh_venv(tmp_path / 'venv')
    _pip(python, 'install', '--no-deps', '--no-index', ewheel, cwd=elsewhere)
    log = _run([python, '-c', 'import json, s2aformer_mm.apis as a; print("RESULT " + json.dumps('
                '[a.__file__, a.model_index_path(), a.configs_dir(), '
                'a.config_path("configs/demo/fpn_s2aformer_mini_ade20k_demo.py")]))'],
               cwd=elsewhere)
    package, index, configs, demo = json.loads(log[log.rindex('RESULT ') + 7:])
    assert package == str(src / 's2aformer_mm' / 'apis' / '__init__.py')
    assert (index, configs) == (str(src / 'model-index.yml'), str(src / 'configs'))
    assert demo == str(src / 'configs' / 'demo' / 'fpn_s2aformer_mini_ade20k_demo.py')
    assert not (src / 's2aformer_mm' / '.mim').exists()


def test_config_path_in_this_checkout():
    """This process runs the checkout (editable install): its configs and index."""
    assert configs_dir() == str(REPO / 'configs')
    assert model_index_path() == str(REPO / 'model-index.yml')
    assert config_path('mmseg/fpn_s2aformer_mini_ade20k.py') == str(
        REPO / 'configs' / 'mmseg' / 'fpn_s2aformer_mini_ade20k.py')
    assert config_path('configs/_base_/models/s2aformer_t.py') == str(
        REPO / 'configs' / '_base_' / 'models' / 's2aformer_t.py')
    with pytest.raises(FileNotFoundError, match='did you mean mmseg/fpn_s2aformer_mini_ade20k'):
        config_path('mmseg/fpn_s2aformer_mini_ade20.py')
    for bad in ('../setup.py', '/etc/passwd', 'mmseg/../../setup.py'):
        with pytest.raises(ValueError, match='relative to configs/'):
            config_path(bad)
    assert os.path.isabs(configs_dir())
