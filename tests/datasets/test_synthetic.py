"""The demo data sets (s2aformer_mm/datasets/synthetic.py) are in the real formats: ADE20K
label PNGs with the dataset's class indices, COCO json that pycocotools and mmdet read,
ImageNet-style lists."""
import cv2
import numpy as np
import pytest

from s2aformer_mm.datasets import generate_ade20k, generate_coco, generate_imagenet
from s2aformer_mm.datasets.synthetic import ADE_BACKGROUNDS, ADE_OBJECTS, COCO_DEMO_IDS


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    generate_imagenet(str(root / 'imagenet'), num_train=8, num_val=4, size=64)
    generate_ade20k(str(root / 'ade'), num_train=8, num_val=4, size=64)
    generate_coco(str(root / 'coco'), num_train=8, num_val=4, size=128)
    return root


# --------------------------------------------------------------------------- data formats
def test_generated_formats(data):
    from mmdet.datasets import CocoDataset
    from mmseg.datasets import ADE20KDataset
    from pycocotools.coco import COCO

    labels = np.unique(np.concatenate([
        np.unique(cv2.imread(str(p), cv2.IMREAD_UNCHANGED))
        for p in (data / 'ade' / 'annotations' / 'training').glob('*.png')]))
    assert 0 in labels  # ADE's "other" (ignored with reduce_zero_label)
    allowed = {0, *ADE_BACKGROUNDS.values(), *(i for _, i in ADE_OBJECTS)}
    assert set(labels.tolist()) <= allowed
    ade_classes = ADE20KDataset.METAINFO['classes']
    for name, idx in [*ADE_BACKGROUNDS.items(), *ADE_OBJECTS]:
        assert ade_classes[idx - 1] == name

    coco = COCO(str(data / 'coco' / 'annotations' / 'instances_val2017.json'))
    cats = coco.loadCats(coco.getCatIds())
    assert [c['name'] for c in cats] == list(CocoDataset.METAINFO['classes'])
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and {a['category_id'] for a in anns} <= set(COCO_DEMO_IDS)
    mask = coco.annToMask(anns[0])
    assert abs(mask.sum() - anns[0]['area']) <= 0.1 * anns[0]['area']

    lines = (data / 'imagenet' / 'meta' / 'train.txt').read_text().split()
    assert (data / 'imagenet' / 'train' / lines[0]).is_file()


