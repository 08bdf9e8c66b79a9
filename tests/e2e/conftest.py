"""End-to-end tests: the tools run as subprocesses on generated data (marked ``e2e``)."""
import pytest

from s2aformer_mm.datasets import generate_ade20k, generate_coco, generate_imagenet


@pytest.fixture(scope='session')
def data(tmp_path_factory):
    """Small data sets in the real formats: ImageNet (8 train / 4 val, 64 px), ADE20K
    (8 / 4, 64 px), COCO (8 / 4, 128 px)."""
    root = tmp_path_factory.mktemp('data')
    generate_imagenet(str(root / 'imagenet'), num_train=8, num_val=4, size=64)
    generate_ade20k(str(root / 'ade'), num_train=8, num_val=4, size=64)
    generate_coco(str(root / 'coco'), num_train=8, num_val=4, size=128)
    return root
