import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: What a built package (wheel, `pip install .`) carries under s2aformer_mm/.mim/, OpenMMLab's
#: layout for installed configs (mmdet/.mim/, mmseg/.mim/): copied from the checkout into the
#: build directory at build time, never into the source tree. Paths inside stay relative to
#: each other (configs' `../_base_/...`, the metafiles' `configs/...`, tools' `../configs`).
MIM_ITEMS = ['configs', 'tools', 'model-index.yml']
#: not shipped: the set-up scripts build a venv in a checkout (README commands A and B)
MIM_EXCLUDE = ['tools/setup_env.sh', 'tools/run_demo.sh', 'tools/run_tests.sh']
ROOT = os.path.dirname(os.path.abspath(__file__))


def mim_files(build_lib):
    """(destination in build_lib, source) for every file of MIM_ITEMS."""
    pairs = []
    for item in MIM_ITEMS:
        src = os.path.join(ROOT, item)
        if not os.path.exists(src):
            raise FileNotFoundError(
                f'{src} is missing: a built package must carry it under s2aformer_mm/.mim/. '
                'Build from a checkout, or from an sdist made with MANIFEST.in.')
        walk = os.walk(src) if os.path.isdir(src) else [(ROOT, [], [item])]
        for dirpath, dirnames, filenames in walk:
            dirnames[:] = sorted(d for d in dirnames if d != '__pycache__')
            for name in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, '/')
                if rel not in MIM_EXCLUDE and not name.endswith(('.pyc', '.pyo')):
                    pairs.append((os.path.join(build_lib, 's2aformer_mm', '.mim', *rel.split('/')),
                                  os.path.join(dirpath, name)))
    return pairs


class BuildPyWithMim(build_py):
    """build_py that also puts MIM_ITEMS under s2aformer_mm/.mim/ of the build (not in an
    editable install, which reads the checkout's own configs/ and model-index.yml)."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):  # setuptools < 64 has none
            return
        mim = os.path.join(self.build_lib, 's2aformer_mm', '.mim')
        if os.path.isdir(mim) and not self.dry_run:
            shutil.rmtree(mim)  # no stale file from an earlier build of a changed checkout
        for dst, src in mim_files(self.build_lib):
            self.mkpath(os.path.dirname(dst))
            self.copy_file(src, dst)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, 'editable_mode', False):
            return outputs
        return outputs + [dst for dst, _ in mim_files(self.build_lib)]


setup(
    name='s2aformer_mm',
    version='0.1.0',
    description=('S2AFormer (Strip Self-Attention) backbone for mmpretrain, mmsegmentation '
                 'and mmdetection'),
    license='Apache-2.0',
    license_files=['LICENSE'],
    packages=find_packages(include=['s2aformer_mm', 's2aformer_mm.*']),
    cmdclass={'build_py': BuildPyWithMim},  # configs etc. under s2aformer_mm/.mim/
    # 3.10 - 3.13 (upstream OpenMMLab line: 3.10 - 3.12, mmcv 2.1.0 does not build on 3.13;
    # tools/setup_env.sh says so). No upper bound: torch 2.14.1 has 3.14 wheels, untested.
    python_requires='>=3.10',
    classifiers=['Programming Language :: Python :: 3.10',
                 'Programming Language :: Python :: 3.11',
                 'Programming Language :: Python :: 3.12',
                 'Programming Language :: Python :: 3.13'],
    # the torch bound is s2aformer_mm.compat.TORCH_MIN (tests/test_compat.py checks they agree).
    # No mmengine requirement: the upstream line installs it as 'mmengine', the maintained line
    # as 'onedl-mmengine' (same import name), and pip cannot express "either" -- a requirement
    # on one would pull it into an environment of the other line and mix them. Importing
    # s2aformer_mm checks the line and its versions (s2aformer_mm.compat.LINES).
    install_requires=['torch>=2.12'],
    extras_require={
        # the upstream OpenMMLab line (tools/setup_env.sh, the default)
        'all': ['mmengine==0.10.7', 'mmcv==2.1.0', 'mmpretrain==1.2.0', 'mmsegmentation==1.2.2',
                'mmdet==3.3.0', 'ftfy', 'regex', 'pycocotools>=2.0.8'],
        # the maintained line (S2A_STACK=onedl bash tools/setup_env.sh); never next to 'all'
        'onedl': ['onedl-mmengine==0.10.12', 'onedl-mmcv==2.3.6', 'onedl-mmpretrain==1.3.6',
                  'onedl-mmsegmentation==1.4.2', 'onedl-mmdetection==3.5.1', 'ftfy', 'regex',
                  'pycocotools>=2.0.8'],
        # tools/deployment (ONNX export and ONNX Runtime); timm only for the benchmark's peers
        'deploy': ['onnx>=1.16', 'onnxruntime>=1.18', 'onnxscript'],
        'benchmark': ['timm'],
        'tests': ['pytest'],
    },
)
