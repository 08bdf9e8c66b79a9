"""The strip-attention operator (s2aformer_mm/models/strip_attention.py): exact against
the literal formula, its own backward, one opaque op under torch.compile, SDPA in
exported graphs."""
import pytest
import torch

from s2aformer_mm import S2AFormer
from s2aformer_mm.models import strip_attention as strip_attention_module
from s2aformer_mm.models.reparam import switch_to_deploy
from s2aformer_mm.models.strip_attention import strip_attention
from s2aformer_mm.testing import TINY_ARCH, assert_all_close, randomise_norms


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
    model = randomise_norms(
        S2AFormer(TINY_ARCH, out_indices=(0, 1, 2, 3), with_cp=form.endswith('cp')))
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
            assert_all_close(compiled(x), model(x))
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
    assert_all_close(out, ref)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_export_uses_sdpa_not_the_strip_op():
    """torch.export (hence ONNX) graphs use the standard SDPA op."""
    model = switch_to_deploy(S2AFormer(TINY_ARCH, out_indices=(3, )))
    ops = _graph_ops(torch.export.export(model, (torch.randn(2, 3, 64, 64), )).graph_module)
    assert any('scaled_dot_product' in op for op in ops), ops
    assert not any('s2aformer' in op for op in ops), ops


