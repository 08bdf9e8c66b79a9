"""S2AFormer builds through the MODELS registries of mmpretrain, mmseg and mmdet."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.registry import DefaultScope

import s2aformer_mm
from s2aformer_mm.compat import installed_line
from s2aformer_mm.integrations import PINS

SCOPES = ['mmpretrain', 'mmseg', 'mmdet']


def _models(scope):
    return __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS


@pytest.mark.parametrize('scope', SCOPES)
def test_build_in_default_scope_and_scoped_name(scope):
    assert scope in s2aformer_mm.REGISTERED
    with DefaultScope.overwrite_default_scope(scope):
        model = _models(scope).build(dict(type='S2AFormer', arch='mini', out_indices=(0, 1, 2, 3)))
    assert isinstance(model, s2aformer_mm.S2AFormer)
    # Scoped names resolve from any registry, including mmengine's root.
    from mmengine.registry import MODELS as ROOT
    scoped = ROOT.build(dict(type=f'{scope}.S2AFormer', arch='T'))
    assert isinstance(scoped, s2aformer_mm.S2AFormer)
    assert scoped.arch_settings['depths'] == [2, 2, 6, 2]
    with torch.no_grad():
        assert len(model.eval()(torch.randn(1, 3, 64, 64))) == 4


def test_classifier_with_paper_head_trains_and_predicts():
    from mmpretrain.structures import DataSample
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        clf = _models('mmpretrain').build(dict(
            type='ImageClassifier', backbone=dict(type='S2AFormer', arch='mini'),
            head=dict(type='S2AFormerClsHead', num_classes=10, in_channels=256,
                      loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1))))
    clf.init_weights()
    x = torch.randn(4, 3, 64, 64)
    samples = [DataSample().set_gt_label(i) for i in range(4)]
    losses = clf(x, samples, mode='loss')
    losses['loss'].backward()
    assert clf.head.head.weight.grad is not None and clf.head.head_dist.weight.grad is not None
    clf.eval()
    preds = clf(x, mode='predict')
    assert preds[0].pred_score.shape == (10,)
    feats = clf.extract_feat(x)
    logits = clf.head(feats)
    x1 = clf.head.pre_logits(feats)
    torch.testing.assert_close(logits, (clf.head.head(x1) + clf.head.head_dist(x1)) / 2)


def test_missing_library_leaves_others_working_and_says_what_to_install():
    code = textwrap.dedent('''
        import importlib.util
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == 'mmdet' else real(name, *a)
        import s2aformer_mm
        assert s2aformer_mm.REGISTERED == ['mmpretrain', 'mmseg'], s2aformer_mm.REGISTERED
        assert s2aformer_mm.MISSING == ['mmdet']
        from mmseg.registry import MODELS
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope('mmseg'):
            MODELS.build(dict(type='S2AFormer', arch='mini'))
        try:
            s2aformer_mm.require('mmdet')
        except ImportError as e:
            print('MSG', e)
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'mmdet is not installed' in out.stdout
    assert f'pip install {PINS[installed_line()]["mmdet"]}' in out.stdout  # the venv's line


def test_require_unknown_scope():
    with pytest.raises(ValueError, match='supports'):
        s2aformer_mm.require('mmocr')
