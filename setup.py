from setuptools import find_packages, setup

setup(
    name='s2aformer_mm',
    version='0.1.0',
    description=('S2AFormer (Strip Self-Attention) backbone for mmpretrain, mmsegmentation '
                 'and mmdetection'),
    license='Apache-2.0',
    license_files=['LICENSE'],
    packages=find_packages(include=['s2aformer_mm', 's2aformer_mm.*']),
    python_requires='>=3.10',
    # the torch bound is s2aformer_mm.compat.TORCH_MIN (tests/test_compat.py checks they agree)
    install_requires=['mmengine>=0.10.4,<1.0', 'torch>=2.12'],
    extras_require={
        'all': ['mmcv==2.1.0', 'mmpretrain==1.2.0', 'mmsegmentation==1.2.2', 'mmdet==3.3.0',
                'ftfy', 'regex', 'pycocotools>=2.0.8'],
        # tools/deployment (ONNX export and ONNX Runtime); timm only for the benchmark's peers
        'deploy': ['onnx>=1.16', 'onnxruntime>=1.18', 'onnxscript'],
        'benchmark': ['timm'],
        'tests': ['pytest'],
    },
)
