"""Every config under configs/ loads, builds and reproduces the paper's counts.

Configs are discovered by glob (``configs/**/*.py`` minus ``_base_``), so a new
config is covered automatically; a new dense (mmseg/mmdet) config must also be
given expected parameter counts, here or in ``DENSE_REFERENCE``.
"""
import importlib
import re
import runpy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import s2aformer_mm
from s2aformer_mm import S2AFormer
from s2aformer_mm.testing import REPO
from s2aformer_mm.complexity import (DENSE_NO_LIM_REFERENCE, DENSE_REFERENCE, PAPER,
                                     REFERENCE, TensorForward, count_macs_mmcv,
                                     count_params, dense_inputs, model_complexity,
                                     rel_err, within_reference)
from s2aformer_mm.models.s2aformer import HybridPerceptionBlock

ROOT = REPO
CONFIG_DIR = ROOT / 'configs'
CONFIGS = sorted(p for p in CONFIG_DIR.rglob('*.py') if '_base_' not in p.parts)
IDS = [str(p.relative_to(CONFIG_DIR)) for p in CONFIGS]
VARIANTS = list(S2AFormer.arch_zoo)
DENSE_SCOPES = ('mmseg', 'mmdet')

#: Expected params (M, stated to ``unit``) of dense configs that are not in the
#: paper, e.g. demos derived from a paper config.
EXTRA_DENSE_PARAMS = {
    # The CPU demo changes data and schedule only, not the Semantic FPN model.
    'fpn_s2aformer_mini_ade20k_demo': dict(params=6.25, unit=0.01),
}

_cache = {}


def _load(path: Path):
    """(cfg, model) for a config; models are built once per session."""
    if path not in _cache:
        cfg = Config.fromfile(str(path))
        scope = cfg.get('default_scope')
        assert scope in ('mmpretrain',) + DENSE_SCOPES, f'{path}: default_scope {scope!r}'
        s2aformer_mm.require(scope)
        registry = importlib.import_module(f'{scope}.registry').MODELS
        with DefaultScope.overwrite_default_scope(scope):
            model = registry.build(cfg.model)
        _cache[path] = cfg, model
    return _cache[path]


def _path(kind, name):
    return CONFIG_DIR / kind / f'{name}.py'


def test_discovery_finds_every_variant_and_task():
    names = {p.stem for p in CONFIGS}
    for v in VARIANTS:
        for name in (f's2aformer_{v}_4xb256_in1k', f'fpn_s2aformer_{v}_ade20k',
                     f'retinanet_s2aformer_{v}_fpn_1x_coco',
                     f'mask-rcnn_s2aformer_{v}_fpn_1x_coco'):
            assert name in names
        assert (CONFIG_DIR / '_base_' / 'models' / f's2aformer_{v}.py').is_file()


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_loads_and_builds(path):
    cfg, model = _load(path)
    assert isinstance(model.backbone, S2AFormer)
    assert cfg.custom_imports == dict(imports=['s2aformer_mm'], allow_failed_imports=False)
    # No SyncBN anywhere: neither in the merged config nor in the built model.
    assert 'SyncBN' not in cfg.pretty_text
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_dense_params_match_reference(path):
    cfg, model = _load(path)
    if cfg.default_scope not in DENSE_SCOPES:
        assert cfg.default_scope == 'mmpretrain'  # checked against Table II below
        return
    expected = DENSE_REFERENCE.get(path.stem) or EXTRA_DENSE_PARAMS.get(path.stem)
    assert expected is not None, (
        f'{path.stem} is a dense config without expected counts: add it to '
        f'DENSE_REFERENCE (paper figures) or EXTRA_DENSE_PARAMS in this file.')
    unit = expected['unit']['params'] if path.stem in DENSE_REFERENCE else expected['unit']
    params = count_params(model) / 1e6
    assert within_reference(params, expected['params'], unit), (params, expected)


@pytest.mark.parametrize('arch', VARIANTS)
def test_classification_configs_reproduce_table2(arch):
    cfg, model = _load(_path('mmpretrain', f's2aformer_{arch}_4xb256_in1k'))
    params = count_params(model) / 1e6
    assert rel_err(params, PAPER[arch]['params']) <= 0.002
    assert rel_err(params, REFERENCE[arch]['params']) <= 0.002
    assert model.backbone.arch_settings['depths'] == S2AFormer.arch_zoo[arch]['depths']


@pytest.mark.parametrize('arch', VARIANTS)
def test_semantic_fpn_flops(arch):
    name = f'fpn_s2aformer_{arch}_ade20k'
    ref = DENSE_REFERENCE[name]
    _, model = _load(_path('mmseg', name))
    model.eval()
    x, samples = dense_inputs(model, ref['shape'])
    gflops = count_macs_mmcv(TensorForward(model, samples), x) / 1e9
    assert within_reference(gflops, ref['gflops'], ref['unit']['gflops']), (gflops, ref)


def _drop_lim(model):
    """Table VII's 'without LIM': the block's LIM branch and its LayerNorm removed."""
    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    blocks = [m for m in model.backbone.modules() if isinstance(m, HybridPerceptionBlock)]
    assert blocks
    for block in blocks:
        block.lim, block.norm2 = Zero(), torch.nn.Identity()


@pytest.mark.parametrize('name', sorted(DENSE_NO_LIM_REFERENCE))
def test_retinanet_flops_with_and_without_lim(name):
    ref, no_lim = DENSE_REFERENCE[name], DENSE_NO_LIM_REFERENCE[name]
    cfg = Config.fromfile(str(_path('mmdet', name)))
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    assert ref['shape'] == (800, 1280)  # the paper's "800 x 1280" (H x W)
    full = model_complexity(model, ref['shape'], ('mmcv',))
    assert within_reference(full['mmcv'] / 1e9, ref['gflops'], ref['unit']['gflops'])
    _drop_lim(model)
    reduced = model_complexity(model, ref['shape'], ('mmcv',))
    # Table VII states these to 0.01; the LIM itself is only 0.10 M / 0.14 G.
    assert abs(reduced['params'] / 1e6 - no_lim['params']) <= 0.01
    assert abs(reduced['mmcv'] / 1e9 - no_lim['gflops']) <= 0.01


def test_recipes():
    cls, _ = _load(_path('mmpretrain', 's2aformer_s_4xb256_in1k'))
    assert cls.optim_wrapper.optimizer.type == 'AdamW'
    assert cls.optim_wrapper.optimizer.lr == 6e-3
    assert cls.train_dataloader.batch_size * 4 == cls.auto_scale_lr.base_batch_size == 1024
    assert cls.train_cfg.max_epochs == 300
    warmup, cosine = cls.param_scheduler
    assert (warmup.type, warmup.end, cosine.type, cosine.begin) == (
        'LinearLR', 20, 'CosineAnnealingLR', 20)
    assert cls.model.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                                       mode='original')
    ema, = [h for h in cls.custom_hooks if h.type == 'EMAHook']
    assert abs((1 - ema.momentum) - 0.9995) < 1e-12  # mmengine weights the new value
    pipeline = [t.type for t in cls.train_dataloader.dataset.pipeline]
    assert {'RandomResizedCrop', 'RandomFlip', 'RandAugment'} <= set(pipeline)
    assert 'Hue' not in cls.pretty_text

    seg, seg_model = _load(_path('mmseg', 'fpn_s2aformer_s_ade20k'))
    assert seg.model.pretrained is None
    assert seg.model.backbone.norm_eval and seg.model.backbone.out_norm
    assert seg.model.backbone.init_cfg.checkpoint == 'checkpoints/s2aformer_s_in1k.pth'
    assert seg.train_cfg.max_iters == 40000 and seg.train_dataloader.batch_size * 4 == 32
    assert seg.optim_wrapper.optimizer.type == 'AdamW' and seg.optim_wrapper.optimizer.lr == 2e-4
    poly, = seg.param_scheduler
    assert (poly.type, poly.power) == ('PolyLR', 0.9)
    for loader in (seg.val_dataloader, seg.test_dataloader):
        assert 'ResizeToMultiple' in [t.type for t in loader.dataset.pipeline]
    assert seg.val_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'
    # Frozen BN: statistics stay fixed in train mode.
    seg_model.train()
    assert not seg_model.backbone.stem[0][2].training
    assert seg_model.decode_head.training

    for det_name in ('retinanet', 'mask-rcnn'):
        det, _ = _load(_path('mmdet', f'{det_name}_s2aformer_t_fpn_1x_coco'))
        assert det.train_cfg.max_epochs == 12
        assert det.train_dataloader.batch_size * 4 == det.auto_scale_lr.base_batch_size == 16
        assert det.optim_wrapper.optimizer.type == 'AdamW'
        assert det.optim_wrapper.optimizer.lr == 1e-4
        assert det.model.backbone.norm_eval
        assert det.model.backbone.init_cfg.checkpoint == 'checkpoints/s2aformer_t_in1k.pth'
        assert det.train_dataloader.dataset.data_root == 'data/coco/'


def _build(cfg_path):
    cfg = Config.fromfile(str(cfg_path))
    registry = importlib.import_module(f'{cfg.default_scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return cfg, registry.build(cfg.model)


def test_downstream_inherits_shipped_config_by_absolute_path(tmp_path):
    shipped = _path('mmseg', 'fpn_s2aformer_mini_ade20k')
    child = tmp_path / 'my_fpn.py'
    child.write_text(
        f"_base_ = [{str(shipped)!r}]\n"
        "model = dict(backbone=dict(init_cfg=None, drop_path_rate=0.2),\n"
        "             decode_head=dict(num_classes=19))\n")
    cfg, model = _build(child)
    assert model.decode_head.num_classes == 19
    assert model.backbone.arch_settings['channels'] == [32, 64, 128, 256]
    assert cfg.model.backbone.init_cfg is None
    assert model.backbone.stages[-1][-1].drop_path.drop_prob == pytest.approx(0.2)
    assert cfg.model.backbone.out_indices == (0, 1, 2, 3)  # inherited, not lost


def _readme_downstream_snippets():
    """The README's downstream config examples, pointed at this checkout."""
    blocks = re.findall(r'```python\n(.*?)```', (ROOT / 'README.md').read_text(), re.S)
    found = [b.replace('/path/to/s2aformer-mm', str(ROOT))
             for b in blocks if '/path/to/s2aformer-mm' in b]
    assert len(found) == 2, 'README: expected a whole-config and a backbone-only example'
    return found


@pytest.mark.parametrize('which', ['whole_config', 'backbone_only'])
def test_readme_downstream_examples_build_and_run(tmp_path, which):
    """The README's two downstream configs, exactly as written, build and run."""
    snippet = _readme_downstream_snippets()[which == 'backbone_only']
    child = tmp_path / 'downstream.py'
    child.write_text(snippet)
    cfg, model = _build(child)
    assert isinstance(model.backbone, S2AFormer)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), mode='tensor')
    if which == 'whole_config':
        assert model.decode_head.num_classes == 19
        assert model.backbone.arch_settings['channels'] == [48, 64, 128, 256]   # S
        assert out.shape == (1, 19, 16, 16)
    else:   # UPerNet from mmseg's ResNet base, S2AFormer-T with its ImageNet init
        assert model.backbone.arch_settings['depths'] == [2, 2, 6, 2]
        assert model.auxiliary_head.in_channels == 128
        assert cfg.model.backbone.init_cfg.checkpoint == 'checkpoints/s2aformer_t_in1k.pth'
        assert out.shape == (1, model.decode_head.num_classes, 16, 16)   # the base's 19


def test_get_flops_tool(capsys):
    tool = runpy.run_path(str(ROOT / 'tools' / 'analysis' / 'get_flops.py'))
    tool['main']([str(_path('mmseg', 'fpn_s2aformer_mini_ade20k')), '--conventions', 'mmcv'])
    out = capsys.readouterr().out
    assert 'input 1x3x512x512' in out
    assert '6.253 M' in out and 'mmcv   (paper Tables IV/VI/VII' in out
    assert "[ok], 23.3 GMACs ('mmcv' convention) [ok]" in out
    tool['main']([str(_path('mmpretrain', 's2aformer_mini_4xb256_in1k')), '--shape', '64', '96',
                  '--cfg-options', 'model.head.num_classes=10'])
    out = capsys.readouterr().out
    assert 'input 1x3x64x96' in out and 'honest' in out and 'paper  (paper Tables II/III' in out
    assert 'reference' not in out  # modified config: no published figure applies
