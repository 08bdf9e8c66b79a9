"""Layer-wise learning-rate decay: ``S2AFormer.get_layer_depth`` and mmpretrain's
``LearningRateDecayOptimWrapperConstructor`` on our configs.

The depths are checked against the order in which the forward pass *uses* the
parameters (recorded with a ``TorchFunctionMode``), not against
``named_parameters()``: the patch embeddings are registered as one ``ModuleList``
before the stages, so registration order is not the network's order.
"""
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from s2aformer_mm.apis import build_model_from_config
from s2aformer_mm.models import S2AFormer
from s2aformer_mm.testing import REPO

ROOT = REPO
CLS_CONFIG = ROOT / 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py'
SEG_CONFIG = ROOT / 'configs/mmseg/fpn_s2aformer_mini_ade20k.py'
DECAY = 0.5  # far from 1, so that neighbouring layers get clearly different lrs


class _FirstUse(TorchFunctionMode):
    """Records the names of parameters in the order torch functions first receive them."""

    def __init__(self, named_params):
        super().__init__()
        self.names = {id(p): n for n, p in named_params}
        self.order = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            name = self.names.get(id(leaf))
            if name is not None and name not in self.order:
                self.order.append(name)
        return func(*args, **kwargs)


def _forward_order(backbone):
    recorder = _FirstUse(backbone.named_parameters())
    with torch.no_grad(), recorder:
        backbone(torch.randn(1, 3, 64, 64))
    return recorder.order


@pytest.mark.parametrize('arch', ['mini', 't', 'xs', 's', 'm'])
def test_depths_follow_the_forward_pass(arch):
    backbone = S2AFormer(arch, out_indices=(0, 1, 2, 3), out_norm=True).eval()
    depths = backbone.arch_settings['depths']
    num_layers = sum(depths) + 2
    order = _forward_order(backbone)
    assert set(order) == {n for n, _ in backbone.named_parameters()}, 'every parameter is used'

    got = [backbone.get_layer_depth(n) for n in order]
    assert all(total == num_layers for _, total in got)
    layer_ids = [d for d, _ in got]
    assert layer_ids == sorted(layer_ids), 'depth decreases somewhere along the forward pass'
    # stem 0, one id per block, nothing of the backbone at the head's depth
    assert layer_ids[0] == 0 and order[0].startswith('stem.')
    assert set(layer_ids) == set(range(num_layers - 1))
    assert backbone.get_layer_depth('head.fc.weight', prefix='backbone.') == (
        num_layers - 1, num_layers)


def test_patch_embeds_and_out_norms_join_their_blocks():
    backbone = S2AFormer('t', out_indices=(0, 1, 2, 3), out_norm=True)  # depths 2-2-6-2
    depth = backbone.get_layer_depth
    assert depth('backbone.stem.0.0.weight', 'backbone.') == (0, 14)
    assert depth('patch_embeds.2.proj.weight')[0] == depth('stages.2.0.pos.weight')[0] == 5
    assert depth('stages.2.5.ffn.fc2.weight')[0] == depth('out_norm2.weight')[0] == 10
    assert depth('stages.3.1.attn.q.weight')[0] == depth('out_norm3.bias')[0] == 12


def test_deploy_form_keeps_the_depths():
    backbone = S2AFormer('mini', out_indices=(0, 1, 2, 3), out_norm=True).eval()
    order = _forward_order(backbone.switch_to_deploy())
    layer_ids = [backbone.get_layer_depth(n)[0] for n in order]
    assert layer_ids == sorted(layer_ids) and set(layer_ids) == set(range(9))


@pytest.mark.parametrize('name, prefix', [('backbone.head.weight', 'backbone.'),
                                          ('stages.0.7.pos.weight', ''),
                                          ('stages.4.0.pos.weight', ''),
                                          ('backbone.stem.0.0.weight', '')])
def test_unknown_backbone_name_is_an_error(name, prefix):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        S2AFormer('mini').get_layer_depth(name, prefix)


def _readme_snippet():
    """The README's layer-decay config lines, as written."""
    blocks = re.findall(r'```python\n(.*?)```', (ROOT / 'README.md').read_text(), re.S)
    found = [b for b in blocks if 'LearningRateDecayOptimWrapperConstructor' in b]
    assert len(found) == 1, 'README: expected one layer-decay example'
    return found[0]


def _param_groups(model, optim_wrapper, scope):
    with DefaultScope.overwrite_default_scope(scope):
        wrapper = build_optim_wrapper(model, optim_wrapper)
    return {g['param_name']: g for g in wrapper.optimizer.param_groups}


def test_classifier_config_with_readme_snippet(tmp_path):
    """mmpretrain's constructor on our classifier config, set up as the README says."""
    snippet = _readme_snippet()
    child = tmp_path / 'layer_decay.py'
    child.write_text(f'_base_ = [{str(CLS_CONFIG)!r}]\n'
                     + snippet.replace('layer_decay_rate=0.75', f'layer_decay_rate={DECAY}'))
    assert f'layer_decay_rate={DECAY}' in child.read_text(), 'README snippet changed'
    cfg = Config.fromfile(str(child))
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'S2AFormer'

    groups = _param_groups(model, cfg.optim_wrapper, 'mmpretrain')
    base_lr = cfg.optim_wrapper.optimizer.lr
    num_layers = sum(model.backbone.arch_settings['depths']) + 2     # mini: 10
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(groups) == sorted(trainable)
    assert {g['layer_id'] for g in groups.values()} == set(range(num_layers))

    def lr(name):
        return groups[name]['lr']

    assert lr('backbone.stem.0.0.weight') == pytest.approx(base_lr * DECAY ** (num_layers - 1))
    assert lr('backbone.patch_embeds.0.proj.weight') == pytest.approx(
        base_lr * DECAY ** (num_layers - 2))
    assert lr('backbone.stages.3.1.ffn.fc2.weight') == pytest.approx(base_lr * DECAY)
    head = [n for n in groups if not n.startswith('backbone.')]
    assert head and all(lr(n) == pytest.approx(base_lr) for n in head)
    # the config's own paramwise settings still apply (no weight decay on norms)
    assert groups['backbone.stages.0.0.norm1.weight']['weight_decay'] == 0
    assert groups['backbone.stages.0.0.pos.weight']['weight_decay'] == cfg.optim_wrapper[
        'optimizer']['weight_decay']


def _segmentor():
    cfg = Config.fromfile(str(SEG_CONFIG))
    cfg.model.backbone.init_cfg = None
    return cfg, build_model_from_config(cfg).train()


@pytest.mark.parametrize('constructor', ['BackboneLayerDecayOptimWrapperConstructor',
                                         'mmpretrain.LearningRateDecayOptimWrapperConstructor'])
def test_dense_model_with_backbone_layer_decay(constructor):
    """mmpretrain's constructor asks the *whole* model for ``get_layer_depth``, which
    mmseg's ``EncoderDecoder`` lacks; ours (registered in mmengine's root registry, so an
    mmseg config names it bare) takes the backbone's: its layers decay, the neck and the
    decode head take the full lr."""
    cfg, model = _segmentor()
    optim_wrapper = cfg.optim_wrapper.copy()
    optim_wrapper.update(constructor=constructor, paramwise_cfg=dict(layer_decay_rate=DECAY))
    if constructor.startswith('mmpretrain.'):
        with pytest.raises(NotImplementedError, match='EncoderDecoder.*get_layer_depth'):
            _param_groups(model, optim_wrapper, 'mmseg')
        return
    groups = _param_groups(model, optim_wrapper, 'mmseg')
    base_lr = cfg.optim_wrapper.optimizer.lr
    num_layers = sum(model.backbone.arch_settings['depths']) + 2
    assert groups['backbone.stem.0.0.weight']['lr'] == pytest.approx(
        base_lr * DECAY ** (num_layers - 1))
    assert groups['backbone.out_norm3.weight']['layer_id'] == num_layers - 2
    rest = [n for n in groups if not n.startswith('backbone.')]
    assert any(n.startswith('neck.') for n in rest) and any(n.startswith('decode_head.')
                                                            for n in rest)
    assert all(groups[n]['lr'] == pytest.approx(base_lr) for n in rest)

