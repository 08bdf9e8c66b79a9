"""Up-front checks of the tools (s2aformer_mm/engine/checks.py); their messages through
the tools are tested in tests/e2e/test_tools.py."""
import pytest
from mmengine.config import Config

from s2aformer_mm.datasets import generate_coco
from s2aformer_mm.engine import DatasetNotFoundError, check_data_dirs


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    generate_coco(str(root / 'coco'), num_train=2, num_val=2, size=64)
    return root


def test_evaluator_list_annotation_file_is_checked(data):
    ann = str(data / 'coco' / 'annotations' / 'instances_val2017.json')
    cfg = Config(dict(
        default_scope='mmdet',
        test_dataloader=dict(dataset=dict(data_root=str(data / 'coco'),
                                          ann_file='annotations/instances_val2017.json')),
        test_evaluator=[dict(type='CocoMetric', ann_file=ann),
                        dict(type='CocoMetric', ann_file='missing.json')]))
    with pytest.raises(DatasetNotFoundError,
                       match=r"'missing\.json' \(test_evaluator\.1\.ann_file\)"):
        check_data_dirs(cfg, ['test_dataloader'])
    cfg.test_evaluator.pop()
    check_data_dirs(cfg, ['test_dataloader'])


