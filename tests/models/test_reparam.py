"""Deploy form (s2aformer_mm/models/reparam.py): folded norms, merged heads, fused
conv + activation give the training form's outputs."""
import copy

import pytest
import torch
import torch.nn as nn

from s2aformer_mm import S2AFormer
from s2aformer_mm.models.reparam import (
    FusedConvAct,
    count_batchnorms,
    fold_affine_into_conv_input,
    fuse_conv_act,
    is_deployed,
    switch_to_deploy,
)
from s2aformer_mm.models.s2aformer import PointwiseLinear, StripSelfAttention
from s2aformer_mm.testing import assert_all_close, paper_classifier, randomise_norms


@pytest.mark.parametrize('arch', ['mini', 't', 'xs', 's', 'm'])
def test_backbone_deploy_equals_eval(arch):
    model = randomise_norms(S2AFormer(arch, out_indices=(0, 1, 2, 3))).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    n_bn = count_batchnorms(model)
    depth = sum(model.arch_settings['depths'])
    arch = model.arch_settings
    assert n_bn == 3 + depth * 3 + sum(d for d, s in zip(arch['depths'], arch['sr_ratios'])
                                       if s > 1)
    assert model.switch_to_deploy() is model
    # Left: stem BN1/BN2 and each FFN's first BN (each precedes a zero-padded 3x3 conv).
    assert count_batchnorms(model) == 2 + depth
    assert is_deployed(model)
    assert all(not m.training for m in model.modules())
    with torch.no_grad():
        assert_all_close(model(x), ref)


def test_deploy_odd_size_and_idempotent():
    model = randomise_norms(S2AFormer('mini', out_indices=(0, 1, 2, 3))).eval()
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        ref = model(x)
        switch_to_deploy(model)
        switch_to_deploy(model)  # second call is a no-op
        assert_all_close(model(x), ref)


def test_deploy_is_inference_only():
    model = S2AFormer('mini').switch_to_deploy()
    with pytest.raises(RuntimeError, match='deploy form'):
        model.train()


def test_classifier_deploy_equals_eval():
    model = paper_classifier('mini')
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, mode='tensor')
    assert count_batchnorms(model) == 3 + 8 * 3 + 6 + 1
    switch_to_deploy(model)
    assert count_batchnorms(model) == 2 + 8   # stem BN1/BN2 + one per FFN; head BN folded
    assert model.head.head_dist is None and isinstance(model.head.norm, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mode='tensor'), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match='deploy form'):
        model.head.loss(model.backbone(x), [])


def test_mmcv_fuse_conv_bn_would_be_wrong():
    """Documents why the deploy form does not call mmcv's recursive fuse_conv_bn:
    it fuses the BN of ``Conv -> GELU -> BN`` across the GELU."""
    from mmcv.cnn import fuse_conv_bn
    model = randomise_norms(S2AFormer('mini')).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
        wrong = fuse_conv_bn(copy.deepcopy(model))(x)[0]
    assert (wrong - ref).abs().max() > 1e-2


def test_padded_conv_input_fold_refused():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match='padding'):
        fold_affine_into_conv_input(conv, torch.ones(4), torch.zeros(4))


def test_pointwise_linear_is_a_linear_per_pixel():
    lin = PointwiseLinear(12, 5)
    x = torch.randn(2, 12, 7, 9).contiguous(memory_format=torch.channels_last)
    ref = nn.functional.linear(x.permute(0, 2, 3, 1), lin.weight, lin.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(lin(x), ref, atol=1e-5, rtol=1e-5)
    assert set(lin.state_dict()) == {'weight', 'bias'} and lin.weight.shape == (5, 12)


@pytest.mark.parametrize('act', [nn.GELU(), nn.GELU(approximate='tanh'), nn.ReLU()])
@pytest.mark.parametrize('groups,k,stride', [(1, 1, 1), (8, 3, 1), (1, 3, 2)])
def test_fused_conv_act_equals_plain(act, groups, k, stride):
    conv = nn.Conv2d(8, 16 if groups == 1 else 8, k, stride, k // 2, groups=groups)
    fused, rest = fuse_conv_act(conv, act)
    assert isinstance(fused, FusedConvAct) and isinstance(rest, nn.Identity)
    x = torch.randn(2, 8, 13, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), act(conv(x)), atol=1e-5, rtol=1e-5)
    # With gradients wanted it runs the plain (differentiable) ops.
    y = fused(x.requires_grad_())
    assert y.grad_fn is not None
    torch.testing.assert_close(y, act(conv(x)), atol=1e-5, rtol=1e-5)


def test_fuse_conv_act_leaves_other_activations():
    conv, act = nn.Conv2d(4, 4, 3, padding=1), nn.SiLU()
    assert fuse_conv_act(conv, act) == (conv, act)
    with pytest.raises(ValueError, match='GELU or ReLU'):
        FusedConvAct(conv, act)


def test_ssa_three_paths_equal(monkeypatch):
    """strip kernel (eager fp32), SDPA (used when traced/compiled), literal formula."""
    from s2aformer_mm.models import s2aformer as mod
    attn = StripSelfAttention(64, 2, sr_ratio=4).train()
    x = torch.randn(2, 64, 44, 36, requires_grad=True)
    results = []
    calls = []
    real = mod.strip_attention
    monkeypatch.setattr(mod, 'strip_attention', lambda *a: calls.append(1) or real(*a))
    for mode in ('strip', 'sdpa', 'formula'):
        attn.fused = mode != 'formula'
        monkeypatch.setattr(mod, 'use_strip_kernel', lambda q, strip=mode == 'strip': strip)
        out = attn(x)
        grads = torch.autograd.grad(out.square().sum(), [x, attn.q.weight, attn.k.weight,
                                                         attn.v.weight])
        results.append((out, grads))
    assert len(calls) == 1  # only the 'strip' pass used the kernel
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], atol=1e-5, rtol=1e-5)
        for u, w in zip(grads, results[0][1]):
            torch.testing.assert_close(u, w, atol=1e-4, rtol=1e-4)


