"""Parameter and MAC counting in two conventions.

* ``honest``: mmengine's (fvcore-style) ``FlopAnalyzer`` with the attention
  matmuls counted. mmengine has no handle for
  ``aten::scaled_dot_product_attention``, so without :func:`_sdpa_macs` the
  fused attention would silently count as zero.
* ``paper``: the same with the two attention matmuls (``q k^T`` and
  ``attn v``) left out -- the paper's 256/224 ratios are pure quadratic
  scaling -- and one MAC per output element of the element-wise ops (residual
  adds, SE scaling, activations), which fvcore skips. This reproduces the
  paper's Table II GMACs within 0.5 % for every variant; without the
  element-wise term it is 1-2 % low.

mmengine reports "flops" that are MACs (one per multiply-add), as the paper does.
"""
from functools import partial
from typing import Dict, Sequence, Tuple

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape, matmul_flop_jit

#: Paper figures (ARCHITECTURE.md / Table II): classifier params (M), backbone
#: params (M), GMACs@224 in the paper's convention.
PAPER = {
    'mini': dict(params=5.02, backbone=2.125, gmacs=0.43),
    't': dict(params=5.80, backbone=2.908, gmacs=0.655),
    'xs': dict(params=6.54, backbone=3.653, gmacs=0.786),
    's': dict(params=10.69, backbone=7.796, gmacs=1.38),
    'm': dict(params=24.87, backbone=21.654, gmacs=4.12),
}
#: Exact figures of the fitted network (ARCHITECTURE.md) the tests compare with.
REFERENCE = {
    'mini': dict(params=5.018, backbone=2.125, gmacs_paper=0.430, gmacs_honest=0.440),
    't': dict(params=5.802, backbone=2.908, gmacs_paper=0.654, gmacs_honest=0.670),
    'xs': dict(params=6.547, backbone=3.653, gmacs_paper=0.785, gmacs_honest=0.803),
    's': dict(params=10.690, backbone=7.796, gmacs_paper=1.380, gmacs_honest=1.412),
    'm': dict(params=24.875, backbone=21.654, gmacs_paper=4.118, gmacs_honest=4.178),
}


def _sdpa_macs(inputs, outputs, count: bool = True) -> int:
    """MACs of ``scaled_dot_product_attention``: ``B h N Ns (d_qk + d_v)``."""
    if not count:
        return 0
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    *batch, n, dqk = q
    ns, dv = k[-2], v[-1]
    b = 1
    for d in batch:
        b *= d
    return b * n * ns * (dqk + dv)


#: Element-wise ops counted (one MAC per output element) in the paper convention.
ELEMENTWISE_OPS = ('aten::add', 'aten::add_', 'aten::mul', 'aten::mul_', 'aten::gelu',
                   'aten::relu', 'aten::relu_', 'aten::sigmoid', 'aten::silu', 'aten::silu_')


def _elementwise_macs(inputs, outputs) -> int:
    shape = get_shape(outputs[0])
    if not shape:  # 0-dim: traced shape arithmetic such as H * W, not tensor work
        return 0
    n = 1
    for d in shape:
        n *= d
    return n


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, inputs, convention: str = 'honest') -> int:
    """MACs of ``model(*inputs)``; ``convention`` is ``'honest'`` or ``'paper'``."""
    if convention not in ('honest', 'paper'):
        raise ValueError(f"convention must be 'honest' or 'paper', got {convention!r}")
    honest = convention == 'honest'
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention', partial(_sdpa_macs, count=honest))
    if not honest:
        # The unfused formula spells the two attention products as matmuls.
        analyzer.set_op_handle('aten::matmul', None)
        for op in ELEMENTWISE_OPS:
            analyzer.set_op_handle(op, _elementwise_macs)
    else:
        analyzer.set_op_handle('aten::matmul', matmul_flop_jit)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(analyzer.total())


def backbone_macs(backbone: torch.nn.Module, shape: Sequence[int] = (224, 224)) -> Dict[str, int]:
    """Both conventions for a backbone (or any ``x -> out`` module) at ``shape``."""
    x = torch.randn(1, 3, *shape)
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            return {c: count_macs(backbone, x, c) for c in ('honest', 'paper')}
    finally:
        backbone.train(training)


def rel_err(value: float, reference: float) -> float:
    return abs(value - reference) / reference


def fmt_row(cells: Sequence, widths: Sequence[int]) -> str:
    return '  '.join(str(c).rjust(w) if i else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))


def describe(value: float, reference: float, tol: float) -> Tuple[str, bool]:
    err = rel_err(value, reference)
    return f'{err * 100:5.2f}%', err <= tol
