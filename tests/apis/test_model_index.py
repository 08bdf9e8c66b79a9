"""The OpenMMLab model index (``model-index.yml`` and the metafiles it imports) and
its registration with mmpretrain's ``ModelHub``."""
import os.path as osp
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from modelindex.load_model_index import load

from s2aformer_mm.apis import (build_model_from_config, model_index_path,
                               register_model_index)
from s2aformer_mm.apis.model_index import MMPRETRAIN_METAFILE
from s2aformer_mm.complexity import count_macs, count_params
from s2aformer_mm.testing import REPO

ROOT = REPO
INDEX = ROOT / 'model-index.yml'
FAMILIES = ('mmpretrain', 'mmseg', 'mmdet')
TASK_CONFIGS = sorted(str(p.relative_to(ROOT)) for f in FAMILIES
                      for p in (ROOT / 'configs' / f).glob('*.py'))
MINI = 's2aformer-mini_4xb256_in1k'


def _imports():
    return yaml.safe_load(INDEX.read_text())['Import']


def _models():
    """(metafile, model dict) for every model, straight from the YAML."""
    out = []
    for rel in _imports():
        for model in yaml.safe_load((ROOT / rel).read_text())['Models']:
            out.append((rel, model))
    return out


def test_index_lists_every_task_config_once():
    assert len(TASK_CONFIGS) == 20  # 5 variants x 4 task families; configs/demo is not a task
    listed = Counter(m['Config'] for _, m in _models())
    assert [c for c, n in listed.items() if n > 1] == []
    assert sorted(listed) == TASK_CONFIGS
    assert all((ROOT / c).is_file() for c in listed)


def test_names_follow_the_configs():
    names = [m['Name'] for _, m in _models()]
    assert len(set(names)) == len(names)
    for metafile, model in _models():
        # OpenMMLab names join a backbone and its variant with '-': s2aformer-mini
        stem = Path(model['Config']).stem
        assert model['Name'] == stem.replace('s2aformer_', 's2aformer-'), model['Name']
        assert Path(model['Config']).parent == Path(metafile).parent  # one metafile per family


def test_metafiles_exist_and_parse():
    assert sorted(_imports()) == [f'configs/{f}/metafile.yml' for f in sorted(FAMILIES)]
    index = load(str(INDEX))
    assert index.check(silent=True) == []
    assert len(index.models) == 20
    for model in index.models:  # collections resolved, paper's results marked, no weights
        assert model.in_collection and model.results, model.name
        assert 'reported by the paper' in model.data['Notes'], model.name
        assert model.weights is None, model.name
        assert model.metadata.data['Parameters'] > 0


@pytest.mark.parametrize('config', TASK_CONFIGS)
def test_parameters_equal_the_code(config):
    model = next(m for _, m in _models() if m['Config'] == config)
    built = build_model_from_config(str(ROOT / config))
    assert model['Metadata']['Parameters'] == count_params(built)


def test_flops_of_a_classifier_equal_the_code():
    meta = next(m for _, m in _models() if m['Name'] == MINI)['Metadata']
    assert meta['Input Size'] == '224x224'
    classifier = build_model_from_config(
        str(ROOT / 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py'))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert meta['FLOPs'] == count_macs(classifier, x, 'honest')
        assert meta['FLOPs in paper convention'] == count_macs(classifier, x, 'paper')


def test_get_model_by_name_after_registration():
    import mmpretrain
    from mmpretrain.apis import ModelHub

    names = register_model_index()
    assert MINI in names and len(names) == 5
    assert register_model_index() == names  # again: a no-op, not a name conflict
    assert osp.samefile(model_index_path(), INDEX)  # a packaged .mim copy may link to it
    assert osp.samefile(ModelHub.get(MINI).config.filename,
                        ROOT / 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py')
    assert set(mmpretrain.list_models('s2aformer')) == set(names)

    model = mmpretrain.get_model(MINI)
    assert type(model).__name__ == 'ImageClassifier'
    assert type(model.backbone).__name__ == 'S2AFormer'
    assert model.backbone.arch_settings['depths'] == [2, 2, 2, 2]
    with pytest.raises(ValueError, match='Failed to find model "s2aformer-tiny'):
        mmpretrain.get_model('s2aformer-tiny_4xb256_in1k')


def test_inference_by_name_runs_without_weights():
    """The inferencers default to ``pretrained=True``; with no published weights
    mmpretrain warns and predicts with random weights (ImageNet class names come
    from the config's test data set)."""
    import mmpretrain

    register_model_index()
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    with pytest.warns(UserWarning, match='Unable to find pre-defined checkpoint'):
        result = mmpretrain.inference_model(MINI, image)
    assert result['pred_scores'].shape == (1000,)
    assert isinstance(result['pred_class'], str)


def test_registration_errors(tmp_path):
    from mmpretrain.apis import ModelHub

    register_model_index()
    before = dict(ModelHub._models_dict)
    # a second copy of the index: its names are taken, and nothing is registered
    (tmp_path / 'configs/mmpretrain').mkdir(parents=True)
    shutil.copy(INDEX, tmp_path / 'model-index.yml')
    shutil.copy(ROOT / MMPRETRAIN_METAFILE, tmp_path / MMPRETRAIN_METAFILE)
    with pytest.raises(ValueError, match='already has these S2AFormer names from another file'):
        register_model_index(str(tmp_path / 'model-index.yml'))
    assert ModelHub._models_dict == before

    with pytest.raises(FileNotFoundError, match='nowhere.yml'):
        register_model_index(str(tmp_path / 'nowhere.yml'))
    (tmp_path / 'other.yml').write_text('Import:\n  - configs/mmseg/metafile.yml\n')
    with pytest.raises(ValueError, match='does not import configs/mmpretrain/metafile.yml'):
        register_model_index(str(tmp_path / 'other.yml'))
