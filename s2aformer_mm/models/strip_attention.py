"""The strip-attention operator of Strip Self-Attention (SSA).

In SSA (paper Sec. III-B1, Algorithm 1) queries and keys are squeezed to one channel
per head -- ``Q in R^{N x 1}``, ``K in R^{Ns x 1}`` ("strips") -- while values keep
``d = C / h`` channels, and the attention is the paper's Eq. (5),

    Attn(Q, K, V) = Softmax(Q K^T / Scale) V            (Eq. 5; Algorithm 1, line "attn")

per head, with ``Scale = sqrt(d_k)`` in Eq. (5) and left open in Algorithm 1 (here
``scale`` multiplies the logits: :class:`~s2aformer_mm.models.s2aformer.StripSelfAttention`
passes ``(C / h) ** -0.5``). Its cost is ``N * Ns`` for ``Q K^T`` (Eq. 14) and
``N * Ns * d`` for ``Attn V`` (Eq. 15).

Because ``Q`` and ``K`` are 1-d, each head's logits ``scale * q_i * k_j`` are an outer
product. :func:`strip_attention` computes the attention block by block of queries
with an O(N)-memory backward, as two operators registered with
``torch.library.custom_op`` (``torch.ops.s2aformer.strip_attention`` and
``torch.ops.s2aformer.strip_attention_backward``) so that ``torch.compile`` keeps
each as one opaque call. :func:`use_strip_kernel` says where the operator is used;
exported, traced and scripted graphs use ``F.scaled_dot_product_attention`` instead.
"""
from typing import Tuple

import torch

from .graph_mode import in_exported_graph

__all__ = ['strip_attention', 'use_strip_kernel', 'STRIP_ATTN_BLOCK', 'STRIP_ATTN_INFER_BLOCK']

#: Elements of one ``(B, h, rows, Ns)`` probability block in the strip-attention
#: backward (4 MiB in fp32): at 800x1333 fwd+bwd of a stage-1 block took 186 ms
#: (2^20), 223 ms (2^18), 196 ms (2^22), 643 ms for the literal formula.
STRIP_ATTN_BLOCK = 1 << 20
#: The same for the forward (16 MiB): nothing of a block is kept for backward, so
#: fewer, larger ops win; still bounded at detection sizes (one block at 224^2).
STRIP_ATTN_INFER_BLOCK = 1 << 22


def _block_rows(q: torch.Tensor, k: torch.Tensor, block: int) -> int:
    return max(16, block // max(1, q.shape[0] * q.shape[1] * k.shape[-2]))


@torch.library.custom_op('s2aformer::strip_attention', mutates_args=())
def _strip_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """Forward of :func:`strip_attention`: ``softmax(q * scale k^T) v`` in blocks of
    rows. The logits of a head are rank-1, so a block is an outer product (no GEMM)."""
    # Dense per-head layouts: q/k/v arrive as strided views of channels-last conv
    # outputs, and the block loop slices them many times (2.5x slower strided).
    q, v = q.contiguous(), v.contiguous()
    kt = k.transpose(-2, -1).contiguous() * scale                        # B h 1 Ns
    rows = _block_rows(q, k, STRIP_ATTN_INFER_BLOCK)
    if q.shape[-2] <= rows:
        return torch.softmax(q * kt, -1) @ v
    return torch.cat([torch.softmax(q[..., s:s + rows, :] * kt, -1) @ v
                      for s in range(0, q.shape[-2], rows)], -2)


@_strip_attention_op.register_fake
def _(q, k, v, scale):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


@torch.library.custom_op('s2aformer::strip_attention_backward', mutates_args=())
def _strip_attention_backward_op(
        dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        out: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`strip_attention` from ``q, k, v`` and the output only
    (``O(N)`` saved): the probabilities are recomputed block by block -- the
    flash-attention recurrences, specialised to 1-d queries and keys."""
    q, v, dout = q.contiguous(), v.contiguous(), dout.contiguous()
    kt = k.transpose(-2, -1).contiguous() * scale                       # B h 1 Ns
    vt = v.transpose(-2, -1)
    dq = torch.empty_like(q)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)           # B h Ns 1
    dv = torch.zeros_like(v)
    delta = (dout * out).sum(-1, keepdim=True)                          # B h N 1
    rows = _block_rows(q, k, STRIP_ATTN_BLOCK)
    for s in range(0, q.shape[-2], rows):
        sl = slice(s, s + rows)
        qc, do = q[..., sl, :], dout[..., sl, :]
        p = torch.softmax(qc * kt, -1)                                  # B h n Ns
        dv += p.transpose(-2, -1) @ do
        ds = p * (do @ vt - delta[..., sl, :])                          # d logits
        dq[..., sl, :] = ds @ kt.transpose(-2, -1)
        dk += (qc.transpose(-2, -1) @ ds).transpose(-2, -1)
    return dq, dk.mul_(scale), dv


@_strip_attention_backward_op.register_fake
def _(dout, q, k, v, out, scale):
    def empty(t):
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)
    return empty(q), empty(k), empty(v)


def _strip_attention_setup(ctx, inputs, output):
    q, k, v, scale = inputs
    ctx.save_for_backward(q, k, v, output)
    ctx.scale = scale


def _strip_attention_grad(ctx, dout):
    q, k, v, out = ctx.saved_tensors
    return (*_strip_attention_backward_op(dout, q, k, v, out, ctx.scale), None)


_strip_attention_op.register_autograd(_strip_attention_grad,
                                      setup_context=_strip_attention_setup)


def strip_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T, -1) v`` for ``q: (B, h, N, 1)``, ``k: (B, h, Ns, 1)``,
    ``v: (B, h, Ns, d)``, in blocks of queries, with an O(N)-memory backward.

    Equal to ``F.scaled_dot_product_attention`` up to rounding. It exists because
    torch's CPU SDPA takes the math path when query/key and value head sizes
    differ (here 1 vs ``C / h``), which materialises (and, for backward, keeps) the
    whole ``N x Ns`` probability matrix per head -- 1 GiB per block in stage 1 of a
    detector at 800x1333 -- and is 1.3-5x slower than this at 224^2. It is a
    registered operator (``torch.ops.s2aformer.strip_attention``) so that
    ``torch.compile`` calls it as one opaque op: inductor's own code for the
    decomposed SDPA ran S2AFormer-T 2x slower than eager.

    Args:
        q (torch.Tensor): Queries ``(B, h, N, 1)``, one channel per head.
        k (torch.Tensor): Keys ``(B, h, Ns, 1)``, one channel per head.
        v (torch.Tensor): Values ``(B, h, Ns, d)``.
        scale (float): Multiplies the logits (``1 / Scale`` of Algorithm 1).

    Returns:
        torch.Tensor: ``(B, h, N, d)`` in the dtype of ``q``. fp32 and fp64 are
        computed as they are; other dtypes (bf16 / fp16 under autocast) in fp32.

    Example:
        >>> import torch
        >>> from s2aformer_mm.models.strip_attention import strip_attention
        >>> q, k, v = torch.randn(2, 4, 196, 1), torch.randn(2, 4, 49, 1), torch.randn(2, 4, 49, 8)
        >>> out = strip_attention(q, k, v, scale=8 ** -0.5)
        >>> out.shape
        torch.Size([2, 4, 196, 8])
        >>> ref = torch.softmax(8 ** -0.5 * q @ k.transpose(-2, -1), -1) @ v
        >>> torch.allclose(out, ref, atol=1e-6)
        True
    """
    if q.dtype not in (torch.float32, torch.float64):
        # bf16 / fp16 (autocast): the block softmax in fp32 -- still O(N) memory; SDPA's
        # math path would keep the N x Ns matrix (RetinaNet-S step: +1.3 GiB in bf16).
        with torch.autocast(q.device.type, enabled=False):
            return _strip_attention_op(q.float(), k.float(), v.float(), scale).to(q.dtype)
    return _strip_attention_op(q, k, v, scale)


def use_strip_kernel(q: torch.Tensor) -> bool:
    """Eager and ``torch.compile`` (any float dtype). Exported, traced or scripted
    graphs use SDPA: one op that ONNX, TorchScript and the FLOP counters know."""
    return q.is_floating_point() and not in_exported_graph()
