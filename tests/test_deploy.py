"""Deploy form (folded BN, merged heads), strip-attention kernel, ONNX export and
torch.compile. CPU only."""
import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.registry import DefaultScope

from s2aformer_mm import S2AFormer
from s2aformer_mm.apis import ClassifierLogits, export_onnx, onnxruntime_session
from s2aformer_mm.models import strip_attention as strip_attention_module
from s2aformer_mm.models.reparam import (FusedConvAct, count_batchnorms,
                                         fold_affine_into_conv_input, fuse_conv_act, is_deployed,
                                         switch_to_deploy)
from s2aformer_mm.models.s2aformer import PointwiseLinear, StripSelfAttention
from s2aformer_mm.models.strip_attention import strip_attention

REPO = Path(__file__).resolve().parents[1]
CLS_CFG = 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py'
TINY = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128], num_heads=[1, 2, 4, 8])


def _randomise(model):
    """Non-trivial BN statistics and norm affines, so a wrong fold cannot hide."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - .5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + .5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + .5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * .4 - .2)
    return model


def _classifier(arch, num_classes=10):
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='S2AFormer', arch=arch),
            head=dict(type='S2AFormerClsHead', num_classes=num_classes,
                      in_channels=(arch['channels'] if isinstance(arch, dict)
                                   else S2AFormer.arch_zoo[arch]['channels'])[-1])))
    with torch.no_grad():  # distinct heads, so merging them is actually tested
        model.head.head_dist.weight.normal_(0, .05)
        model.head.head_dist.bias.normal_(0, .1)
        model.head.head.bias.normal_(0, .1)
    return _randomise(model).eval()


def _close(a, b):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('arch', ['mini', 't', 'xs', 's', 'm'])
def test_backbone_deploy_equals_eval(arch):
    model = _randomise(S2AFormer(arch, out_indices=(0, 1, 2, 3))).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    n_bn = count_batchnorms(model)
    depth = sum(model.arch_settings['depths'])
    assert n_bn == 3 + depth * 3 + sum(d for d, s in zip(model.arch_settings['depths'],
                                                          model.arch_settings['sr_ratios']) if s > 1)
    assert model.switch_to_deploy() is model
    # Left: stem BN1/BN2 and each FFN's first BN (each precedes a zero-padded 3x3 conv).
    assert count_batchnorms(model) == 2 + depth
    assert is_deployed(model)
    assert all(not m.training for m in model.modules())
    with torch.no_grad():
        _close(model(x), ref)


def test_deploy_odd_size_and_idempotent():
    model = _randomise(S2AFormer('mini', out_indices=(0, 1, 2, 3))).eval()
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        ref = model(x)
        switch_to_deploy(model)
        switch_to_deploy(model)  # second call is a no-op
        _close(model(x), ref)


def test_deploy_is_inference_only():
    model = S2AFormer('mini').switch_to_deploy()
    with pytest.raises(RuntimeError, match='deploy form'):
        model.train()


def test_classifier_deploy_equals_eval():
    model = _classifier('mini')
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
    model = _randomise(S2AFormer('mini')).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
        wrong = fuse_conv_bn(copy.deepcopy(model))(x)[0]
    assert (wrong - ref).abs().max() > 1e-2


def test_padded_conv_input_fold_refused():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match='padding'):
        fold_affine_into_conv_input(conv, torch.ones(4), torch.zeros(4))


# --------------------------------------------------------------------------- attention
@pytest.mark.parametrize('shape', [(2, 1, 300, 20, 8), (1, 4, 1000, 49, 16)])
def test_strip_attention_forward_backward_fp64(shape):
    B, h, N, Ns, d = shape
    q = torch.randn(B, h, N, 1, dtype=torch.float64, requires_grad=True) * 3
    k = torch.randn(B, h, Ns, 1, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, h, Ns, d, dtype=torch.float64, requires_grad=True)
    q.retain_grad()
    args = [q, k, v]
    out = strip_attention(q, k, v, 0.7)
    ga = torch.autograd.grad(out.square().sum(), args)
    ref = torch.softmax(0.7 * q @ k.transpose(-2, -1), -1) @ v
    gb = torch.autograd.grad(ref.square().sum(), args)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    for u, w in zip(ga, gb):
        torch.testing.assert_close(u, w, atol=1e-10, rtol=1e-10)


def test_strip_attention_gradcheck():
    q = torch.randn(1, 2, 40, 1, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 1, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: strip_attention(a, b, c, 1.3), (q, k, v))


@pytest.mark.parametrize('block', [1 << 22, 5000])  # one block / 7 blocks of queries
def test_strip_attention_inference_path(monkeypatch, block):
    """Without autograd the kernel takes the block-softmax path (no log-sum-exp)."""
    monkeypatch.setattr(strip_attention_module, 'STRIP_ATTN_INFER_BLOCK', block)
    q, k, v = torch.randn(2, 2, 700, 1) * 3, torch.randn(2, 2, 49, 1), torch.randn(2, 2, 49, 8)
    with torch.no_grad():
        out = strip_attention(q, k, v, 0.7)
    ref = torch.softmax(0.7 * q @ k.transpose(-2, -1), -1) @ v
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_strip_attention_bf16_autocast_computes_in_fp32():
    q = torch.randn(1, 2, 300, 1, requires_grad=True)
    k = torch.randn(1, 2, 20, 1, requires_grad=True)
    v = torch.randn(1, 2, 20, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        qb, kb, vb = (t * 1.0 for t in (q, k, v))
        out = strip_attention(qb.bfloat16(), kb.bfloat16(), vb.bfloat16(), 0.7)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    qf, kf, vf = (t.detach().bfloat16().float() for t in (q, k, v))
    ref = torch.softmax(0.7 * qf @ kf.transpose(-2, -1), -1) @ vf
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)  # bf16 output rounding
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


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


# --------------------------------------------------------------------------- ONNX
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec('onnxruntime') is None or importlib.util.find_spec('onnxscript') is None,
    reason='onnx/onnxscript/onnxruntime not installed (bash tools/setup_env.sh installs them)')


@needs_onnx
@pytest.mark.parametrize('what, batch', [('backbone', 2), ('classifier', 1)])
def test_onnx_dynamic_axes_match(tmp_path, what, batch):
    # batch 1: torch.export specialises size-1 dimensions (export_onnx traces at 2).
    if what == 'backbone':
        net = switch_to_deploy(_randomise(S2AFormer(TINY, out_indices=(0, 1, 2, 3))))
    else:
        net = ClassifierLogits(switch_to_deploy(_classifier(TINY)))
    path = export_onnx(net, str(tmp_path / f'{what}.onnx'), torch.randn(batch, 3, 64, 96))
    sess = onnxruntime_session(path)
    for shape in [(2, 3, 64, 96), (3, 3, 97, 64), (1, 3, 128, 160)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x)
        ref = ref if isinstance(ref, tuple) else (ref, )
        outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        assert len(outs) == len(ref)
        for o, r in zip(outs, ref):
            assert tuple(o.shape) == tuple(r.shape)
            torch.testing.assert_close(torch.from_numpy(o), r, atol=1e-4, rtol=1e-4)


def _deploy_tool(script, *args, ok=True):
    proc = subprocess.run([sys.executable, f'tools/deployment/{script}.py', *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert (proc.returncode == 0) == ok, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout if ok else proc.stderr


@needs_onnx
def test_export_tool_defaults(tmp_path):
    # The tool's defaults (batch 1, dynamic axes), at 64x64 to keep it short.
    out = _deploy_tool('export_onnx', tmp_path / 'mini.onnx', '--arch', 'mini', '--classifier',
                       '--shape', '64', '64')
    errors = [float(e) for e in re.findall(r'max abs error per output ([-+.e\d]+)', out)]
    assert len(errors) == 2 and max(errors) < 1e-4, out
    assert (tmp_path / 'mini.onnx').stat().st_size > 1e6


@needs_onnx
def test_export_tool_backbone_of_dense_checkpoint(tmp_path):
    """A RetinaNet-style checkpoint (backbone.* with output norms of stages 1-3, neck,
    head): the graph returns what the neck received."""
    backbone = _randomise(S2AFormer('mini', out_indices=(1, 2, 3), out_norm=True)).eval()
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state.update({'neck.lateral_convs.0.conv.weight': torch.zeros(8, 64, 1, 1),
                  'bbox_head.retina_cls.bias': torch.zeros(9)})
    torch.save({'state_dict': state, 'meta': {}}, tmp_path / 'retina.pth')
    _deploy_tool('export_onnx', tmp_path / 'b.onnx', '--arch', 'mini', '--checkpoint',
                 tmp_path / 'retina.pth', '--shape', '64', '64', '--static')
    sess = onnxruntime_session(str(tmp_path / 'b.onnx'))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = backbone(x)
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert len(outs) == 3
    _close([torch.from_numpy(o) for o in outs], ref)


def test_export_tool_wrong_arch_summarised(tmp_path):
    torch.save({'state_dict': _classifier('mini').state_dict()}, tmp_path / 'mini.pth')
    err = _deploy_tool('export_onnx', tmp_path / 'x.onnx', '--arch', 't', '--classifier',
                       '--num-classes', 10, '--checkpoint', tmp_path / 'mini.pth', ok=False)
    assert 'does not match an S2AFormer-t classifier' in err and '--arch' in err, err
    assert 'Traceback' not in err and len(err.splitlines()) < 8, err


def test_fuse_checkpoint_tool(tmp_path):
    from s2aformer_mm.apis import build_model_from_config, load_deploy_model
    from s2aformer_mm.engine.launch import save_initial_checkpoint
    ckpt = save_initial_checkpoint(str(REPO / CLS_CFG), str(tmp_path / 'init.pth'))
    out = _deploy_tool('fuse_checkpoint', CLS_CFG, ckpt, tmp_path / 'deploy.pth', '--check')
    error = float(re.search(r'max abs error ([-+.e\d]+)', out).group(1))
    assert error < 1e-4, out
    deployed = load_deploy_model(str(REPO / CLS_CFG), str(tmp_path / 'deploy.pth'))
    reference = build_model_from_config(str(REPO / CLS_CFG))
    reference.load_state_dict(torch.load(ckpt, weights_only=True)['state_dict'])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ClassifierLogits(deployed.eval())(x),
                                   ClassifierLogits(reference.eval())(x), atol=1e-4, rtol=1e-4)


def test_deploy_checkpoint_through_library_apis(tmp_path):
    """mmseg's own API: init_model refuses a deploy checkpoint (mmengine loads with
    strict=False and would only warn), and load_deploy_model's model runs in
    inference_model with the training checkpoint's predictions and dataset_meta."""
    from mmseg.apis import inference_model, init_model

    from s2aformer_mm.checkpoint import CheckpointMismatchError
    from s2aformer_mm.apis import load_deploy_model
    from s2aformer_mm.engine.launch import save_initial_checkpoint
    config = str(REPO / 'configs/demo/fpn_s2aformer_mini_ade20k_demo.py')
    ckpt = save_initial_checkpoint(config, str(tmp_path / 'init.pth'))
    state = torch.load(ckpt, weights_only=True)
    meta = dict(classes=tuple(f'c{i}' for i in range(150)), palette=[[0, 0, 0]] * 150)
    state['meta']['dataset_meta'] = meta
    torch.save(state, ckpt)
    _deploy_tool('fuse_checkpoint', config, ckpt, tmp_path / 'deploy.pth')
    with pytest.raises(CheckpointMismatchError, match=r'(?s)backbone are S2AFormer.s deploy form'
                       r'.*load_deploy_model'):
        init_model(config, str(tmp_path / 'deploy.pth'), device='cpu')
    deployed = load_deploy_model(config, str(tmp_path / 'deploy.pth'))
    assert deployed.dataset_meta['classes'] == meta['classes']
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    with torch.no_grad():
        got = inference_model(deployed, image).seg_logits.data
        want = inference_model(init_model(config, ckpt, device='cpu'), image).seg_logits.data
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- compile
def _graph_ops(graph_module):
    """Ops called in an FX graph and its sub-graphs (e.g. activation checkpointing's)."""
    return {str(n.target) for gm in graph_module.modules() if isinstance(gm, torch.fx.GraphModule)
            for n in gm.graph.nodes if n.op == 'call_function'}


@pytest.mark.parametrize('form', ['deploy', 'train', 'train_with_cp'])
def test_compile_one_graph_with_the_strip_attention_op(form):
    """One graph, no graph breaks; the attention is the registered strip op (inductor's
    code for the decomposed SDPA ran S2AFormer-T 2x slower than eager); training
    through the op's autograd formula ('aot_eager' runs it on fake tensors) matches
    eager."""
    model = _randomise(S2AFormer(TINY, out_indices=(0, 1, 2, 3), with_cp=form.endswith('cp')))
    x = torch.randn(2, 3, 64, 64)
    if form == 'deploy':
        switch_to_deploy(model)
    else:
        model.train()
        x.requires_grad_()
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    ops = set().union(*map(_graph_ops, explain.graphs))
    assert sum('s2aformer.strip_attention' in op for op in ops) == 1, ops
    assert not any('scaled_dot_product' in op for op in ops), ops
    torch._dynamo.reset()
    if form == 'deploy':
        compiled = torch.compile(model, backend='eager', fullgraph=True)  # fast: no codegen
        with torch.no_grad():
            _close(compiled(x), model(x))
        return
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    torch.manual_seed(0)   # the same drop-path draws in both
    ref = model(x)
    ref_grads = torch.autograd.grad(sum(o.square().sum() for o in ref),
                                    [x, *model.parameters()], allow_unused=True)
    torch.manual_seed(0)
    out = compiled(x)
    grads = torch.autograd.grad(sum(o.square().sum() for o in out),
                                [x, *model.parameters()], allow_unused=True)
    torch._dynamo.reset()
    _close(out, ref)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_export_uses_sdpa_not_the_strip_op():
    """torch.export (hence ONNX) graphs use the standard SDPA op."""
    model = switch_to_deploy(S2AFormer(TINY, out_indices=(3, )))
    ops = _graph_ops(torch.export.export(model, (torch.randn(2, 3, 64, 64), )).graph_module)
    assert any('scaled_dot_product' in op for op in ops), ops
    assert not any('s2aformer' in op for op in ops), ops
