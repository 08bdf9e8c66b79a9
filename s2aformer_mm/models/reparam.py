"""Inference-time re-parameterisation ("deploy form") of the model's layers.

Every fold here is an exact algebraic identity for a network in eval mode (BN uses
its running statistics, so it is a per-channel affine map ``y = a * x + b`` with
``a = gamma / sqrt(var + eps)`` and ``b = beta - mean * a``); the results differ
from the training form only by floating-point rounding.

* :func:`bn_affine` / :func:`ln_affine` -- the ``(a, b)`` of an eval-mode BN, the
  ``(gamma, beta)`` of a LayerNorm; :func:`without_affine` is that LayerNorm once
  its affine part has been folded into what follows it.
* :func:`fold_bn_into_conv` -- ``BN(conv(x))``: BN *after* a conv folds into the
  conv's output side (mmcv's ``_fuse_conv_bn``).
* :func:`fold_affine_into_conv_input` -- ``conv(a * x + b)``: an affine map
  *before* a conv folds into the conv's input side **only if the conv has no
  padding** (1x1 convs, the 2x2/stride-2 patch embedding, the ``sr x sr``
  reduction conv). With zero padding the border would see ``b`` instead of 0 in
  the folded model, so a BN that precedes a padded 3x3 conv (stem BN1/BN2, the
  FFN's first BN before its depth-wise conv) is *not* folded.
* :func:`fold_affine_into_linear_input` -- ``Linear(a * x + b)``.
* :func:`fold_identity_into_dwconv` -- ``x + dw(x)`` equals ``dw'(x)`` with 1
  added to the centre tap (RepVGG-style; exact with zero padding because the
  centre tap always reads ``x`` itself).
* :func:`merge_linears` -- ``(l1(x) + l2(x)) / 2`` is one linear layer.
* :func:`fuse_conv_act` -- ``act(conv(x))`` becomes one :class:`FusedConvAct`
  (oneDNN convolution with the activation as a post-op on CPU; same arithmetic).
* :func:`switch_to_deploy` -- switches every module of a model that has a deploy
  form (``S2AFormer``, ``S2AFormerClsHead``, ...); :func:`is_deployed` and
  :func:`count_batchnorms` inspect the result.

Do **not** run ``mmcv.cnn.fuse_conv_bn`` on S2AFormer: it fuses a BN into the last
conv seen among a module's children even when an activation sits between them,
so it would fold the stem's and the FFN's ``Conv -> GELU -> BN`` into wrong
weights. Use :func:`switch_to_deploy` (or ``S2AFormer.switch_to_deploy()``).

Loading deploy checkpoints and ONNX export are in :mod:`s2aformer_mm.apis`.
"""
from typing import Tuple

import torch
import torch.nn as nn
from mmcv.cnn.utils.fuse_conv_bn import _fuse_conv_bn
from torch.nn.modules.batchnorm import _BatchNorm

from .graph_mode import in_eager_mode

__all__ = ['bn_affine', 'ln_affine', 'without_affine', 'fold_bn_into_conv',
           'fold_affine_into_conv_input', 'fold_affine_into_linear_input',
           'fold_identity_into_dwconv', 'merge_linears', 'FusedConvAct', 'fuse_conv_act',
           'count_batchnorms', 'switch_to_deploy', 'is_deployed']


def bn_affine(bn: _BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BN as ``(a, b)`` with ``BN(x) = a * x + b`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('cannot fold a BatchNorm without running statistics '
                         '(track_running_stats=False): it is not affine in eval mode')
    a = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    b = -bn.running_mean * a
    if bn.bias is not None:
        b = b + bn.bias
    return a.detach(), b.detach()


def ln_affine(norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(gamma, beta)`` of a token LayerNorm over channels (to fold into what follows
    it); ones / zeros for a LayerNorm without them."""
    if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
        raise NotImplementedError(f'deploy form folds a LayerNorm over channels, got {norm}')
    c = norm.normalized_shape[0]
    gamma = norm.weight.detach() if norm.weight is not None else torch.ones(c)
    beta = norm.bias.detach() if norm.bias is not None else torch.zeros(c)
    return gamma, beta


def without_affine(norm: nn.LayerNorm) -> nn.LayerNorm:
    """The same LayerNorm without its affine part (folded elsewhere with :func:`ln_affine`)."""
    return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """``BN(conv(x))`` -> ``conv'(x)`` in place (mmcv's fold); returns ``conv``."""
    return _fuse_conv_bn(conv, bn)


def _check_unpadded(conv: nn.Conv2d) -> None:
    pad = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, )
    if isinstance(conv.padding, str) or any(p != 0 for p in pad):
        raise ValueError(
            f'cannot fold an affine map into the input of {conv}: with padding the border '
            'pixels would see the affine offset instead of zeros (not exact).')


@torch.no_grad()
def fold_affine_into_conv_input(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> None:
    """``conv(a * x + b)`` -> ``conv'(x)`` in place, per input channel; the conv must
    have no padding (see the module docstring). Handles grouped/depth-wise convs."""
    _check_unpadded(conv)
    w = conv.weight
    out_c, cin_g = w.shape[:2]
    g = conv.groups
    a_ = a.view(g, 1, cin_g).expand(g, out_c // g, cin_g).reshape(out_c, cin_g, 1, 1)
    b_ = b.view(g, 1, cin_g).expand(g, out_c // g, cin_g).reshape(out_c, cin_g, 1, 1)
    extra = (w * b_).sum((1, 2, 3))
    if conv.bias is None:
        conv.bias = nn.Parameter(extra)
    else:
        conv.bias.add_(extra)
    w.mul_(a_)


@torch.no_grad()
def fold_affine_into_linear_input(linear: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> None:
    """``Linear(a * x + b)`` -> ``Linear'(x)`` in place."""
    extra = linear.weight @ b
    if linear.bias is None:
        linear.bias = nn.Parameter(extra)
    else:
        linear.bias.add_(extra)
    linear.weight.mul_(a)


@torch.no_grad()
def fold_identity_into_dwconv(conv: nn.Conv2d) -> None:
    """``x + dw(x)`` -> ``dw'(x)`` in place: +1 on the centre tap of a depth-wise
    conv with odd kernel, stride 1 and 'same' zero padding."""
    k = conv.kernel_size
    if not (conv.groups == conv.in_channels == conv.out_channels and conv.stride == (1, 1)
            and all(s % 2 == 1 for s in k) and conv.padding == (k[0] // 2, k[1] // 2)
            and conv.padding_mode == 'zeros'):
        raise ValueError(f'identity can only be folded into a stride-1 same-padded depth-wise '
                         f'conv with an odd kernel, got {conv}')
    conv.weight[:, 0, k[0] // 2, k[1] // 2] += 1


@torch.no_grad()
def merge_linears(l1: nn.Linear, l2: nn.Linear) -> nn.Linear:
    """One linear layer equal to ``(l1(x) + l2(x)) / 2``."""
    if l1.weight.shape != l2.weight.shape:
        raise ValueError('merge_linears needs two linears of the same shape')
    out = nn.Linear(l1.in_features, l1.out_features, bias=True).to(l1.weight)
    out.weight.copy_((l1.weight + l2.weight) / 2)
    zero = torch.zeros_like(out.bias)
    b1 = l1.bias if l1.bias is not None else zero
    b2 = l2.bias if l2.bias is not None else zero
    out.bias.copy_((b1 + b2) / 2)
    return out


_HAS_ONEDNN_CONV_POST_OPS = (torch.backends.mkldnn.is_available()
                             and hasattr(torch.ops.mkldnn, '_convolution_pointwise'))


def _onednn_post_op(conv: nn.Module, act: nn.Module):
    """``(attr, algorithm)`` of ``act`` as a oneDNN post-op of the zero-padded
    ``Conv2d`` ``conv``, or None where they cannot be fused."""
    if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str) \
            or conv.padding_mode != 'zeros':
        return None
    if isinstance(act, nn.GELU):
        return 'gelu', act.approximate
    if isinstance(act, nn.ReLU):
        return 'relu', ''
    return None


def _onednn_eager(x: torch.Tensor) -> bool:
    """Eager fp32 on a CPU with oneDNN."""
    return (in_eager_mode() and x.device.type == 'cpu' and x.dtype == torch.float32
            and _HAS_ONEDNN_CONV_POST_OPS and torch.backends.mkldnn.enabled)


class FusedConvAct(nn.Module):
    """``act(conv(x))`` for inference, in one pass over memory on CPU.

    On CPU (fp32, eager) it calls oneDNN's convolution with the activation as a
    post-op (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile``'s
    CPU backend emits): the activation runs on each output tile while it is in
    cache instead of in a second sweep over the map. For the FFN's 48->192 1x1
    conv at 56x56 (batch 16) that is 2.8 ms instead of 6.5 ms. Elsewhere (GPU,
    reduced precision, traced/compiled/exported graphs) it runs the two modules.
    Exact up to rounding either way. Usually made by :func:`fuse_conv_act`.

    Args:
        conv (nn.Conv2d): The convolution; zero padding (``padding_mode='zeros'``,
            numeric ``padding``), any kernel, stride, dilation and groups. Kept as
            ``self.conv`` (its parameters keep the ``conv.*`` state-dict keys).
        act (nn.Module): The activation after it: ``nn.GELU`` (either
            ``approximate`` mode) or ``nn.ReLU``; anything else raises
            ``ValueError``. Kept as ``self.act``.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        post_op = _onednn_post_op(conv, act)
        if post_op is None:
            raise ValueError(f'FusedConvAct fuses a zero-padded Conv2d with GELU or ReLU, '
                             f'got {conv} and {act}')
        self.conv, self.act = conv, act
        self._attr, self._algorithm = post_op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        # The fused op has no autograd formula: with gradients wanted, the plain ops.
        if _onednn_eager(x) and not (torch.is_grad_enabled()
                                     and (x.requires_grad or c.weight.requires_grad)):
            return torch.ops.mkldnn._convolution_pointwise(
                x, c.weight, c.bias, list(c.padding), list(c.stride), list(c.dilation),
                c.groups, self._attr, [], self._algorithm)
        return self.act(c(x))


def fuse_conv_act(conv: nn.Module, act: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """``(FusedConvAct(conv, act), Identity)`` where oneDNN can fuse ``act``,
    else ``(conv, act)`` unchanged; assign the pair back in place of the two."""
    if _onednn_post_op(conv, act) is not None:
        return FusedConvAct(conv, act), nn.Identity()
    return conv, act


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm modules in ``model`` (what the deploy form could not fold)."""
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def is_deployed(model: nn.Module) -> bool:
    """True if every module of ``model`` that has a deploy form is in it."""
    return all(getattr(m, 'deploy', True) for m in model.modules()
               if hasattr(m, 'switch_to_deploy'))


def switch_to_deploy(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and switch every sub-module that has a deploy form
    (``S2AFormer``, ``S2AFormerClsHead``, ...) to it, in place; returns ``model``.

    Works on a bare backbone, an mmpretrain ``ImageClassifier``, or an mmseg/mmdet
    model holding an S2AFormer backbone (their other modules are left as they are).
    The result is inference-only: its ``train()`` raises.
    """
    model.eval()
    for m in list(model.modules()):
        if hasattr(m, 'switch_to_deploy') and not getattr(m, 'deploy', False):
            m.switch_to_deploy()
    return model
