"""Unit tests of the S2AFormer backbone (mmpretrain-style API)."""
import doctest
import importlib
import pkgutil

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import s2aformer_mm.models
from s2aformer_mm import S2AFormer
from s2aformer_mm.models.s2aformer import StripSelfAttention

VARIANTS = ['mini', 't', 'xs', 's', 'm']


@pytest.mark.parametrize('arch', VARIANTS)
def test_variant_shapes(arch):
    model = S2AFormer(arch, out_indices=(0, 1, 2, 3)).eval()
    outs = model(torch.randn(2, 3, 64, 96))
    chans = S2AFormer.arch_zoo[arch]['channels']
    assert [tuple(o.shape) for o in outs] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(chans, (4, 8, 16, 32))]


@pytest.mark.parametrize('hw', [(33, 33), (112, 137), (512, 683), (37, 100)])
def test_odd_sizes(hw):
    model = S2AFormer('mini', out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    h, w = hw
    # stem: ceil(h/2) (3x3, pad 1, stride 2); each 2x2/2 patch embed floors.
    h, w = (h + 1) // 2, (w + 1) // 2
    for i, o in enumerate(outs):
        h, w = h // 2, w // 2
        assert o.shape[-2:] == (h, w), (i, o.shape)
        assert torch.isfinite(o).all()


def test_arch_case_insensitive_and_custom():
    assert S2AFormer('XS').arch_settings == S2AFormer('xs').arch_settings
    custom = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128], num_heads=[1, 2, 4, 8])
    model = S2AFormer(custom, out_indices=-1).eval()
    assert model.arch_settings['sr_ratios'] == [8, 4, 2, 1]
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 128, 2, 2)


def test_bad_arch_names_choices():
    with pytest.raises(ValueError,
                       match=r"Unknown S2AFormer arch 'huge'.*'m', 'mini', 's', 't', 'xs'"):
        S2AFormer('huge')
    with pytest.raises(ValueError, match=r"missing keys \['num_heads'\].*unknown keys \['heads'\]"):
        S2AFormer(dict(depths=[1] * 4, channels=[8] * 4, heads=[1] * 4))
    with pytest.raises(ValueError, match='4 positive ints'):
        S2AFormer(dict(depths=[1] * 3, channels=[8] * 4, num_heads=[1] * 4))
    with pytest.raises(ValueError, match='divisible'):
        S2AFormer(dict(depths=[1] * 4, channels=[10] * 4, num_heads=[3] * 4))


def test_out_indices_normalised_and_validated():
    assert S2AFormer('mini', out_indices=-1).out_indices == (3,)
    assert S2AFormer('mini', out_indices=[-4, 1, -2]).out_indices == (0, 1, 2)
    assert S2AFormer('mini', out_indices=2).out_indices == (2,)
    for bad in ([4], [0, -5], [1.0], [0, 0], []):
        with pytest.raises((ValueError, TypeError), match='out_indices'):
            S2AFormer('mini', out_indices=bad)
    with pytest.raises(ValueError, match=r'-4\.\.3'):
        S2AFormer('mini', out_indices=(0, 4))


def test_frozen_stages_validated():
    with pytest.raises(ValueError, match=r'frozen_stages must be an int in \[-1, 4\]'):
        S2AFormer('mini', frozen_stages=5)


@pytest.mark.parametrize('frozen', [0, 2, 4])
def test_frozen_stages(frozen):
    model = S2AFormer('mini', frozen_stages=frozen, out_indices=(0, 1, 2, 3), out_norm=True)
    model.train()
    frozen_mods = [model.stem] + [m for i in range(frozen)
                                  for m in (model.patch_embeds[i], model.stages[i],
                                            getattr(model, f'out_norm{i}'))]
    for m in frozen_mods:
        assert all(not p.requires_grad for p in m.parameters())
        assert all(not sub.training for sub in m.modules())
    for i in range(frozen, 4):
        assert all(p.requires_grad for p in model.stages[i].parameters())
        assert model.stages[i].training
    # Frozen BN statistics do not move during a training forward.
    bn = model.stem[0][2]
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bn.running_mean)


def test_norm_eval():
    model = S2AFormer('mini', norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert model.stages[0].training
    assert all(m.training for m in S2AFormer('mini').train().modules() if isinstance(m, _BatchNorm))


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    ref = S2AFormer('mini', out_indices=(0, 1, 2, 3), drop_path_rate=0.)
    cp = S2AFormer('mini', out_indices=(0, 1, 2, 3), with_cp=True)
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for m in (ref, cp):
        m.train()
        out = m(x)
        sum(o.square().mean() for o in out).backward()
        outs.append((out, {n: p.grad.clone() for n, p in m.named_parameters()}))
    for a, b in zip(outs[0][0], outs[1][0]):
        torch.testing.assert_close(a, b)
    for n in outs[0][1]:
        torch.testing.assert_close(outs[0][1][n], outs[1][1][n], msg=n)


def test_every_parameter_gets_gradient_dense():
    model = S2AFormer('mini', out_indices=(0, 1, 2, 3), out_norm=True, norm_eval=True).train()
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad


def test_with_cp_auto_checkpoints_on_the_cpu_only(monkeypatch):
    """with_cp='auto' (the configs' setting) recomputes the blocks in backward for CPU
    inputs; for inputs elsewhere (a 'meta' tensor stands in for a GPU here) it does not.
    Other values are refused."""
    import s2aformer_mm.models.s2aformer as module
    calls = []
    real = module.cp.checkpoint
    monkeypatch.setattr(module.cp, 'checkpoint',
                        lambda fn, *a, **kw: calls.append(a[0].device.type) or real(fn, *a, **kw))
    model = S2AFormer(arch='mini', with_cp='auto').train()
    model(torch.randn(1, 3, 64, 64)).__getitem__(-1).sum().backward()
    assert calls == ['cpu'] * 8  # every block of mini
    calls.clear()
    block = model.stages[0][0]
    x = torch.randn(1, 32, 16, 16, device='meta', requires_grad=True)
    block.to('meta')(x)
    assert calls == []
    block.with_cp = True
    block(x)
    assert calls == ['meta']
    with pytest.raises(ValueError, match="with_cp must be True, False or 'auto'"):
        S2AFormer(arch='mini', with_cp='yes')


@pytest.mark.parametrize('with_cp', [False, True])
def test_gradient_strides_match_parameters(with_cp):
    # DDP's gradient layout contract: a gradient with other strides than its parameter
    # is copied into the bucket every step, with a warning (depth-wise weights under
    # channels-last convs did this). Also after a checkpoint round trip.
    model = S2AFormer('mini', out_indices=(0, 1, 2, 3), with_cp=with_cp)
    model.load_state_dict(S2AFormer('mini', out_indices=(0, 1, 2, 3)).state_dict())
    sum(o.mean() for o in model.train()(torch.randn(2, 3, 64, 64))).backward()
    bad = [(n, p.stride(), p.grad.stride()) for n, p in model.named_parameters()
           if p.grad.stride() != p.stride()]
    assert not bad, bad


def test_fused_attention_equals_formula():
    attn = StripSelfAttention(64, 2, sr_ratio=4)
    x = torch.randn(2, 64, 20, 28, requires_grad=True)
    attn.fused = True
    a = attn(x)
    ga = torch.autograd.grad(a.square().sum(), [x, attn.q.weight, attn.v.weight])
    attn.fused = False
    b = attn(x)
    gb = torch.autograd.grad(b.square().sum(), [x, attn.q.weight, attn.v.weight])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)


def test_bad_input_errors():
    model = S2AFormer('mini').eval()
    with pytest.raises(ValueError, match='3 channels.*grayscale'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='smaller than 32x32'):
        model(torch.randn(1, 3, 16, 64))


def test_docstring_examples_run():
    """The ``Example:`` sections in the models package run as written."""
    package = s2aformer_mm.models
    names = [package.__name__] + [m.name for m in pkgutil.iter_modules(package.__path__,
                                                                     f'{package.__name__}.')]
    attempted = 0
    for name in names:
        result = doctest.testmod(importlib.import_module(name), raise_on_error=False)
        assert result.failed == 0, f'{result.failed} docstring example(s) failed in {name}'
        attempted += result.attempted
    assert attempted > 0
