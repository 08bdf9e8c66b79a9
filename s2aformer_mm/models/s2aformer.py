"""S2AFormer: Strip Self-Attention vision transformer backbone.

Paper: "S2AFormer: Strip Self-Attention for Efficient Vision Transformer" (Xu et
al.). No official code exists; the layer list follows ``docs/architecture.md``,
which was fitted to every count the paper publishes (Tables II-VIII). Equation numbers below
refer to the paper.

This module holds the building blocks (stem, patch embedding, SSA, LIM, FFN, HPB)
and :class:`S2AFormer`; the strip-attention operator is in
:mod:`~s2aformer_mm.models.strip_attention` and the deploy-form folds in
:mod:`~s2aformer_mm.models.reparam`. The models depend on torch, mmengine and mmcv
only (and :mod:`s2aformer_mm.checkpoint` for ``Pretrained`` loading), so they are
shared unchanged by the mmpretrain, mmsegmentation and mmdetection registrations in
``s2aformer_mm.integrations``.
"""
import copy
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule, ModuleList, Sequential
from mmengine.model.weight_init import (constant_init, normal_init,
                                        trunc_normal_init)
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint import CheckpointMismatchError, load_backbone_pretrained
from . import reparam
from .strip_attention import strip_attention, use_strip_kernel

STEM_CHANNELS = (16, 16, 32)
#: The smallest input side the network accepts: stem (/2) + four 2x2 patch
#: embeddings (/16) and the 8x8 reduction of stage 1 need at least 32 pixels.
MIN_INPUT_SIZE = 32


def _to_channels_last_ln(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a token LayerNorm to an NCHW map.

    The permutes are free views when ``x`` is in channels-last memory format,
    which is what :class:`S2AFormer` uses internally. ONNX export writes the same
    normalisation over the channel axis of the NCHW map instead.
    """
    if torch.onnx.is_in_onnx_export() and isinstance(norm, nn.LayerNorm):
        # In ONNX the permutes become Transposes around LayerNormalization, and ONNX
        # Runtime reorders its blocked conv layout around each: normalising over the
        # channel axis in place ran S2AFormer-T 15 % and M 17 % faster in ORT 1.32.
        u = x.mean(1, keepdim=True)
        d = x - u
        y = d * torch.rsqrt((d * d).mean(1, keepdim=True) + norm.eps)
        if norm.weight is not None:
            y = y * norm.weight[:, None, None]
        if norm.bias is not None:
            y = y + norm.bias[:, None, None]
        return y
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PointwiseLinear(nn.Linear):
    """A :class:`~torch.nn.Linear` over the channels of each pixel of an NCHW map.

    Same parameters (and checkpoint keys) as ``nn.Linear``, computed as a 1x1
    convolution: on channels-last maps that needs no permutes, and on CPU
    oneDNN's 1x1 convolution was 2-2.3x faster than the BLAS linear for SSA's
    shapes (48-256 channels) on the development machine.

    Args:
        in_features (int): Input channels.
        out_features (int): Output channels.
        bias (bool): Add a learnable bias. Defaults to True.
        device (torch.device, optional): Where the parameters are created.
            Defaults to None (torch's default device).
        dtype (torch.dtype, optional): Parameter dtype. Defaults to None
            (torch's default dtype).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class ConvAct(Sequential):
    """``Conv -> act -> BN``: the stem / FFN unit (activation *before* BN).

    The conv has a bias and ``kernel_size // 2`` zero padding. Children (and
    state-dict keys): ``0`` conv, ``1`` activation, ``2`` norm.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int): Square kernel size (odd: the padding keeps the size
            at stride 1).
        stride (int): Conv stride. Defaults to 1.
        groups (int): Conv groups. Defaults to 1.
        act_cfg (dict): mmcv activation config. Defaults to
            ``dict(type='GELU')``.
        norm_cfg (dict): mmcv norm config. Defaults to ``dict(type='BN')``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 *,
                 kernel_size: int,
                 stride: int = 1,
                 groups: int = 1,
                 act_cfg: Dict = dict(type='GELU'),
                 norm_cfg: Dict = dict(type='BN')):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                      padding=kernel_size // 2, groups=groups),
            build_activation_layer(act_cfg),
            build_norm_layer(norm_cfg, out_channels)[1])

    def fuse_act(self) -> None:
        """Deploy form: conv and activation as one
        :class:`~s2aformer_mm.models.reparam.FusedConvAct`."""
        self[0], self[1] = reparam.fuse_conv_act(self[0], self[1])


class Stem(Sequential):
    """Three 3x3 :class:`ConvAct` units, the first with stride 2:
    ``in_channels -> 16 -> 16 -> 32`` channels (``STEM_CHANNELS``), total stride 2.

    Args:
        in_channels (int): Input (image) channels. Defaults to 3.
        act_cfg (dict): Activation of each unit. Defaults to ``dict(type='GELU')``.
        norm_cfg (dict): Norm of each unit. Defaults to ``dict(type='BN')``.
    """

    def __init__(self,
                 in_channels: int = 3,
                 *,
                 act_cfg: Dict = dict(type='GELU'),
                 norm_cfg: Dict = dict(type='BN')):
        c1, c2, c3 = STEM_CHANNELS
        super().__init__(
            ConvAct(in_channels, c1, kernel_size=3, stride=2, act_cfg=act_cfg, norm_cfg=norm_cfg),
            ConvAct(c1, c2, kernel_size=3, stride=1, act_cfg=act_cfg, norm_cfg=norm_cfg),
            ConvAct(c2, c3, kernel_size=3, stride=1, act_cfg=act_cfg, norm_cfg=norm_cfg))


class PatchEmbed(BaseModule):
    """Down-sampling between stages: 2x2 conv with stride 2 (no padding: odd sizes
    round down), then a token norm over channels.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        norm_cfg (dict): Token norm config. Defaults to
            ``dict(type='LN', eps=1e-6)``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 *,
                 norm_cfg: Dict = dict(type='LN', eps=1e-6)):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.norm = build_norm_layer(norm_cfg, out_channels)[1]

    def forward(self, x):
        return _to_channels_last_ln(self.norm, self.proj(x))


class StripSelfAttention(BaseModule):
    """Strip Self-Attention (SSA, Algorithm 1 and Eq. 13-15).

    Queries and keys are squeezed to one channel per head ("strips":
    ``Q in R^{N x 1}``, ``K in R^{Ns x 1}``) while values keep ``C / h``
    channels per head; keys and values come from a depth-wise ``sr x sr``
    convolution with stride ``sr`` (Convolution Spatial Reduction) followed by
    BN, so ``Ns = N / sr^2``. The attention cost is therefore
    ``O(N * Ns * (1 + C/h))`` per head instead of ``O(N^2 * C)``.

    The operator itself (paper Eq. 5) is
    :func:`~s2aformer_mm.models.strip_attention.strip_attention`.

    Args:
        dim (int): Channels C of the input and output map.
        num_heads (int): Heads h; must divide ``dim``.
        sr_ratio (int): Spatial reduction ratio (kernel = stride = sr); 1 uses
            no reduction (keys and values from every token). Defaults to 1.
        qk_scale (float, optional): Logit scale. The paper leaves "Scale" open;
            None (the default) gives ``(C / h) ** -0.5``, following PVT, from
            which SSA derives.
        attn_drop (float): Dropout rate on the attention probabilities in
            training (with ``fused``, applied through
            ``F.scaled_dot_product_attention``). Defaults to 0.
        proj_drop (float): Dropout rate after the output projection.
            Defaults to 0.
        norm_cfg (dict): Norm after the reduction conv (``sr_ratio > 1``).
            Defaults to ``dict(type='BN')``.
        fused (bool): Use a fused attention: in eager mode and under
            ``torch.compile`` the block-wise
            :func:`~s2aformer_mm.models.strip_attention.strip_attention` (never
            holds the ``N x Ns`` matrix, O(N) memory for backward; computed in
            fp32 under bf16/fp16 autocast), else ``F.scaled_dot_product_attention``
            (exported/traced graphs, attention dropout).
            ``False`` runs the literal formula; all are equal up to rounding.
            Defaults to True.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 *,
                 sr_ratio: int = 1,
                 qk_scale: Optional[float] = None,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 norm_cfg: Dict = dict(type='BN'),
                 fused: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'channels ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.scale = qk_scale if qk_scale is not None else (dim // num_heads) ** -0.5
        self.fused = fused
        self.attn_drop = attn_drop
        self.deploy = False
        self.q = PointwiseLinear(dim, num_heads)    # channel squeeze: 1 channel / head
        self.k = PointwiseLinear(dim, num_heads)
        self.v = PointwiseLinear(dim, dim)
        self.proj = PointwiseLinear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, groups=dim)
            self.sr_norm = build_norm_layer(norm_cfg, dim)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalised NCHW map; returns the NCHW attention output."""
        B, C, H, W = x.shape
        h = self.num_heads
        # Floors for sizes that are not multiples of sr, as in PVT/CMT.
        reduced = self.sr_norm(self.sr(x)) if self.sr_ratio > 1 else x
        # On channels-last maps these reshapes are views.
        q = self.q(x).reshape(B, h, H * W, 1)                               # B h N 1
        k = self.k(reduced).reshape(B, h, -1, 1)                            # B h Ns 1
        v = self.v(reduced).reshape(B, h, C // h, -1).transpose(-2, -1)     # B h Ns C/h
        drop = self.attn_drop if self.training else 0.
        if self.fused and not drop and use_strip_kernel(q):
            out = strip_attention(q, k, v, self.scale)
        elif self.fused:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)          # B h N Ns
            attn = F.dropout(attn.softmax(dim=-1), drop, self.training)
            out = attn @ v
        out = out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)  # channels-last
        return self.proj_drop(self.proj(out))

    @torch.no_grad()
    def switch_to_deploy(self, norm: Optional[nn.LayerNorm] = None) -> None:
        """Inference form, in place (eval-mode statistics; exact up to rounding).

        * ``sr_norm`` (BN after the unpadded ``sr x sr`` reduction conv) folds into
          that conv.
        * ``norm`` -- the block's LayerNorm that feeds this module -- gives its
          affine ``gamma * n + beta`` to ``q`` and to ``k``/``v`` (``sr == 1``) or
          the reduction conv (``sr > 1``; unpadded, so exact); the caller then
          replaces it by an affine-free LayerNorm.
        * The logit scale moves into ``q``'s weights (``scale * q_i * k_j``).
        """
        if self.deploy:
            return
        if norm is not None:
            gamma, beta = reparam.ln_affine(norm)
            reparam.fold_affine_into_linear_input(self.q, gamma, beta)
            if self.sr_ratio > 1:
                reparam.fold_affine_into_conv_input(self.sr, gamma, beta)
            else:
                reparam.fold_affine_into_linear_input(self.k, gamma, beta)
                reparam.fold_affine_into_linear_input(self.v, gamma, beta)
        if self.sr_ratio > 1 and isinstance(self.sr_norm, _BatchNorm):
            reparam.fold_bn_into_conv(self.sr, self.sr_norm)
            self.sr_norm = nn.Identity()
        self.q.weight.mul_(self.scale)
        self.q.bias.mul_(self.scale)
        self.scale = 1.0
        self.deploy = True


class SqueezeExcite(BaseModule):
    """SE channel attention (Hu et al.): global average pool -> 1x1 conv
    (``C -> C / ratio``) -> ReLU -> 1x1 conv (``C / ratio -> C``) -> sigmoid, which
    scales the input's channels. Both convs have a bias.

    Args:
        channels (int): Channels C of the input and output.
        ratio (int): Reduction of the hidden width (``C // ratio``). Defaults to 4.
    """

    def __init__(self, channels: int, *, ratio: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // ratio, kernel_size=1)
        self.fc2 = nn.Conv2d(channels // ratio, channels, kernel_size=1)

    def forward(self, x):
        w = x.mean((2, 3), keepdim=True)
        return x * self.fc2(self.fc1(w).relu()).sigmoid()


class LocalInteraction(BaseModule):
    """Local Interaction Module (LIM, Eq. 6-7).

    ``PWConv -> ReLU -> DWConv3x3 -> SE -> ReLU -> PWConv``; the point-wise
    convs are grouped (groups = C), which is what the paper's parameter counts
    (Table VII) admit. All convs have a bias; there is no norm.

    Args:
        dim (int): Channels C of the input and output.
        se_ratio (int): Reduction ratio of the :class:`SqueezeExcite`.
            Defaults to 4.
    """

    def __init__(self, dim: int, *, se_ratio: int = 4):
        super().__init__()
        self.pw1 = nn.Conv2d(dim, dim, kernel_size=1, groups=dim)
        self.dw = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.se = SqueezeExcite(dim, ratio=se_ratio)
        self.pw2 = nn.Conv2d(dim, dim, kernel_size=1, groups=dim)
        self.deploy = False

    @torch.no_grad()
    def switch_to_deploy(self, norm: Optional[nn.LayerNorm] = None) -> None:
        """Inference form: ``pw1`` (1x1, groups=C) is a per-channel affine map, so
        ``pw1(gamma * n + beta)`` is the LayerNorm ``norm`` with affine
        ``(w * gamma, w * beta + b)``; ``pw1`` becomes an identity. Exact. Without
        ``norm`` nothing changes."""
        if self.deploy:
            return
        if norm is not None:
            gamma, beta = reparam.ln_affine(norm)
            if not norm.elementwise_affine:
                raise ValueError('LIM deploy: the LayerNorm must keep its affine part')
            w = self.pw1.weight.view(-1)
            norm.weight.copy_(gamma * w)
            norm.bias.copy_(beta * w + self.pw1.bias)
            self.pw1 = nn.Identity()
        self.deploy = True

    def forward(self, x):
        x = self.dw(self.pw1(x).relu())      # Eq. 6
        return self.pw2(self.se(x).relu())   # Eq. 7


class InvertedResidualFFN(BaseModule):
    """The HPB's MLP (Eq. 4): an inverted residual with expansion ``ratio``.

    ``1x1 (C->rC) -> GELU -> BN``, ``DW3x3 + skip -> GELU -> BN``,
    ``1x1 (rC->C) -> BN``.

    Args:
        dim (int): Channels C of the input and output.
        ratio (int): Expansion r of the hidden width ``r * C``. Defaults to 4.
        act_cfg (dict): Activation after the first 1x1 conv and after the
            depth-wise conv. Defaults to ``dict(type='GELU')``.
        norm_cfg (dict): The three norms. Defaults to ``dict(type='BN')``.
    """

    def __init__(self,
                 dim: int,
                 *,
                 ratio: int = 4,
                 act_cfg: Dict = dict(type='GELU'),
                 norm_cfg: Dict = dict(type='BN')):
        super().__init__()
        hidden = dim * ratio
        self.fc1 = ConvAct(dim, hidden, kernel_size=1, act_cfg=act_cfg, norm_cfg=norm_cfg)
        self.dw = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = build_activation_layer(act_cfg)
        self.dw_norm = build_norm_layer(norm_cfg, hidden)[1]
        self.fc2 = nn.Conv2d(hidden, dim, kernel_size=1)
        self.fc2_norm = build_norm_layer(norm_cfg, dim)[1]
        self.deploy = False

    def forward(self, x):
        x = self.fc1(x)
        if self.deploy:   # identity in dw's centre tap, GELU fused, dw_norm/fc2_norm in fc2
            return self.fc2(self.act(self.dw(x)))
        x = self.dw_norm(self.act(self.dw(x) + x))
        return self.fc2_norm(self.fc2(x))

    @torch.no_grad()
    def switch_to_deploy(self, norm: Optional[nn.LayerNorm] = None) -> None:
        """Inference form (exact up to rounding):

        * ``dw(x) + x`` -> one depth-wise conv with 1 added to its centre tap;
        * ``dw_norm`` (BN after GELU) folds into the *input* side of ``fc2``
          (a 1x1 conv: no padding, so exact) and ``fc2_norm`` into its output;
        * ``norm`` (the block's LayerNorm before the FFN), if given, gives its
          affine to ``fc1``'s 1x1 conv input (exact); the caller drops it.
        * both ``conv -> GELU`` pairs run as one fused op
          (:class:`~s2aformer_mm.models.reparam.FusedConvAct`);
        * Kept: ``fc1``'s BN. It follows a GELU and precedes the zero-padded 3x3
          depth-wise conv, so folding it into that conv's input would change the
          border pixels (they would see ``-b/a`` instead of 0): not exact.
        """
        if self.deploy:
            return
        if norm is not None:
            reparam.fold_affine_into_conv_input(self.fc1[0], *reparam.ln_affine(norm))
        reparam.fold_identity_into_dwconv(self.dw)
        self.fc1.fuse_act()
        self.dw, self.act = reparam.fuse_conv_act(self.dw, self.act)
        if isinstance(self.dw_norm, _BatchNorm):
            reparam.fold_affine_into_conv_input(self.fc2, *reparam.bn_affine(self.dw_norm))
            self.dw_norm = nn.Identity()
        if isinstance(self.fc2_norm, _BatchNorm):
            reparam.fold_bn_into_conv(self.fc2, self.fc2_norm)
            self.fc2_norm = nn.Identity()
        self.deploy = True


class HybridPerceptionBlock(BaseModule):
    """Hybrid Perception Block (HPB, Eq. 1-4).

    ``x = x + DWConv(x)``; ``x = x + SSA(LN(x))``; ``x = x + LIM(LN(x))``;
    ``x = x + FFN(LN(x))`` (with stochastic depth on the last three).

    Args:
        dim (int): Channels C of the input and output map.
        num_heads (int): Attention heads h of the :class:`StripSelfAttention`.
        sr_ratio (int): Its spatial reduction ratio (1: no reduction).
        mlp_ratio (int): Expansion of the :class:`InvertedResidualFFN`.
            Defaults to 4.
        drop_path (float): Stochastic-depth rate on the SSA, LIM and FFN
            branches. Defaults to 0.
        qk_scale (float, optional): Logit scale of the attention; None (the
            default) gives ``(C / h) ** -0.5``.
        attn_drop (float): Dropout rate on the attention probabilities.
            Defaults to 0.
        proj_drop (float): Dropout rate after the attention's output projection.
            Defaults to 0.
        fused_attn (bool): ``fused`` of :class:`StripSelfAttention`. Defaults
            to True.
        norm_cfg (dict): Conv-side norms (attention reduction, FFN).
            Defaults to ``dict(type='BN')``.
        token_norm_cfg (dict): The three norms before SSA, LIM and FFN.
            Defaults to ``dict(type='LN', eps=1e-6)``.
        act_cfg (dict): FFN activation. Defaults to ``dict(type='GELU')``.
        with_cp (bool | str): Gradient checkpointing of the block (saves memory,
            recomputes the forward in backward; same results). ``'auto'``: only
            for inputs on the CPU, where activations live in RAM. Defaults to False.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 *,
                 sr_ratio: int,
                 mlp_ratio: int = 4,
                 drop_path: float = 0.,
                 qk_scale: Optional[float] = None,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 fused_attn: bool = True,
                 norm_cfg: Dict = dict(type='BN'),
                 token_norm_cfg: Dict = dict(type='LN', eps=1e-6),
                 act_cfg: Dict = dict(type='GELU'),
                 with_cp: Union[bool, str] = False):
        super().__init__()
        self.with_cp = with_cp
        self.pos = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm1 = build_norm_layer(token_norm_cfg, dim)[1]
        self.attn = StripSelfAttention(
            dim, num_heads, sr_ratio=sr_ratio, qk_scale=qk_scale, attn_drop=attn_drop,
            proj_drop=proj_drop, norm_cfg=norm_cfg, fused=fused_attn)
        self.norm2 = build_norm_layer(token_norm_cfg, dim)[1]
        self.lim = LocalInteraction(dim)
        self.norm3 = build_norm_layer(token_norm_cfg, dim)[1]
        self.ffn = InvertedResidualFFN(dim, ratio=mlp_ratio, act_cfg=act_cfg, norm_cfg=norm_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.deploy = False

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Inference form: ``x + pos(x)`` becomes ``pos'(x)`` (identity in the
        centre tap); the affine parts of ``norm1``/``norm3`` fold into SSA's
        q/k/v/reduction and the FFN's first 1x1 conv, and LIM's first grouped 1x1
        conv folds into ``norm2``; see the sub-modules' ``switch_to_deploy``.
        Drop-path is the identity in eval mode."""
        if self.deploy:
            return
        reparam.fold_identity_into_dwconv(self.pos)
        self.attn.switch_to_deploy(self.norm1)
        self.norm1 = reparam.without_affine(self.norm1)
        self.lim.switch_to_deploy(self.norm2)
        self.ffn.switch_to_deploy(self.norm3)
        self.norm3 = reparam.without_affine(self.norm3)
        self.drop_path = nn.Identity()
        self.deploy = True

    def _forward(self, x):
        x = self.pos(x) if self.deploy else x + self.pos(x)                       # Eq. 1
        x = x + self.drop_path(self.attn(_to_channels_last_ln(self.norm1, x)))    # Eq. 2
        x = x + self.drop_path(self.lim(_to_channels_last_ln(self.norm2, x)))     # Eq. 3
        x = x + self.drop_path(self.ffn(_to_channels_last_ln(self.norm3, x)))     # Eq. 4
        return x

    def forward(self, x):
        checkpointing = x.device.type == 'cpu' if self.with_cp == 'auto' else self.with_cp
        if checkpointing and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def _refuse_deploy_weights(module: 'S2AFormer', state_dict, prefix, *args) -> None:
    """Deploy-form weights (LayerNorm affines folded away, so ``norm1.weight`` is gone)
    in a training-form model: the libraries' loaders (mmengine's ``load_checkpoint``,
    ``strict=False``) would only warn and the model would predict wrongly."""
    if (not module.deploy and f'{prefix}stages.0.0.attn.q.weight' in state_dict
            and f'{prefix}stages.0.0.norm1.weight' not in state_dict):
        raise CheckpointMismatchError(
            f'The weights loaded into {prefix.rstrip(".") or "the backbone"} are S2AFormer\'s '
            f'deploy form (tools/deployment/fuse_checkpoint.py or switch_to_deploy()), which '
            f'the training-form model cannot use. Load them with '
            f's2aformer_mm.apis.load_deploy_model(CONFIG, CHECKPOINT), or load the training '
            f'checkpoint and call s2aformer_mm.models.switch_to_deploy(model).')


class S2AFormer(BaseModule):
    """S2AFormer backbone.

    A stem (three 3x3 convs, stride 2) followed by four stages; each stage is a
    2x2/stride-2 patch embedding and ``depths[i]`` Hybrid Perception Blocks,
    giving feature maps at strides 4, 8, 16 and 32.

    Args:
        arch (str | dict): ``'mini'``, ``'t'``, ``'xs'``, ``'s'`` or ``'m'``
            (case-insensitive, paper Table II), or a dict with keys
            ``depths``, ``channels``, ``num_heads`` and optionally
            ``sr_ratios`` (default ``[8, 4, 2, 1]``), each a 4-item list.
            Defaults to ``'t'``.
        in_channels (int): Input channels. Defaults to 3.
        out_indices (int | Sequence[int]): Stages whose outputs are returned;
            negatives count from the end. Defaults to -1 (last stage).
        frozen_stages (int): ``-1`` freezes nothing, ``0`` the stem, ``i`` the
            stem and stages ``0..i-1`` (parameters stop gradients and the
            modules stay in eval mode). Defaults to -1.
        norm_eval (bool): Keep every BatchNorm in eval mode while training
            (the paper's "normalization layers frozen" for dense tasks).
            Defaults to False.
        out_norm (bool): Add a LayerNorm to each returned feature map (PVT /
            Swin style, for dense heads). Defaults to False.
        drop_path_rate (float): Stochastic depth, linearly increasing over
            blocks from 0 to this rate. Defaults to 0.
        mlp_ratio (int): FFN expansion. Defaults to 4.
        qk_scale (float, optional): Attention logit scale; None (the default)
            gives ``(C / h) ** -0.5``. See :class:`StripSelfAttention`.
        attn_drop_rate (float): Dropout rate on the attention probabilities.
            Defaults to 0.
        proj_drop_rate (float): Dropout rate after each attention's output
            projection. Defaults to 0.
        fused_attn (bool): Fused attention (the strip-attention kernel, or
            SDPA in exported graphs); False runs the literal formula. Same
            results up to rounding. Defaults to True.
        with_cp (bool | str): Gradient checkpointing of each block (same
            results, about half the activation memory in training). ``'auto'``
            (what the configs use): on while training on the CPU, where
            activations live in RAM, off on GPUs; decided per forward from the
            input's device and logged once. Defaults to False.
        norm_cfg (dict): Conv-side norm (stem, attention reduction, FFN).
            Defaults to ``dict(type='BN')``.
        token_norm_cfg (dict): Token norm (patch embeddings, blocks, output
            norms). Defaults to ``dict(type='LN', eps=1e-6)``.
        act_cfg (dict): Activation of the stem and the FFNs. Defaults to
            ``dict(type='GELU')``.
        init_cfg (dict | list[dict], optional): mmengine init config;
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``
            loads a classifier checkpoint. Missing backbone keys raise unless
            the dict also holds ``strict=False``. Defaults to None (random
            initialisation, logged).

    Example:
        >>> import torch
        >>> from s2aformer_mm.models import S2AFormer
        >>> model = S2AFormer(arch='mini', out_indices=(0, 1, 2, 3)).eval()
        >>> inputs = torch.rand(1, 3, 224, 224)
        >>> level_outputs = model(inputs)
        >>> for level_out in level_outputs:
        ...     print(tuple(level_out.shape))
        (1, 32, 56, 56)
        (1, 64, 28, 28)
        (1, 128, 14, 14)
        (1, 256, 7, 7)
    """

    arch_zoo = {
        'mini': dict(depths=[2, 2, 2, 2], channels=[32, 64, 128, 256], num_heads=[1, 2, 4, 8]),
        't': dict(depths=[2, 2, 6, 2], channels=[48, 64, 128, 256], num_heads=[1, 2, 4, 8]),
        'xs': dict(depths=[2, 2, 10, 2], channels=[48, 64, 128, 256], num_heads=[1, 2, 4, 8]),
        's': dict(depths=[2, 4, 24, 4], channels=[48, 64, 128, 256], num_heads=[1, 2, 4, 8]),
        'm': dict(depths=[2, 4, 20, 2], channels=[96, 128, 256, 512], num_heads=[1, 2, 4, 8]),
    }
    default_sr_ratios = [8, 4, 2, 1]
    _arch_keys = {'depths', 'channels', 'num_heads'}
    _optional_arch_keys = {'sr_ratios'}
    num_stages = 4
    _auto_cp_logged = False   # with_cp='auto' is logged once per process

    def __init__(self,
                 arch: Union[str, Dict] = 't',
                 *,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 out_norm: bool = False,
                 drop_path_rate: float = 0.,
                 mlp_ratio: int = 4,
                 qk_scale: Optional[float] = None,
                 attn_drop_rate: float = 0.,
                 proj_drop_rate: float = 0.,
                 fused_attn: bool = True,
                 with_cp: Union[bool, str] = False,
                 norm_cfg: Dict = dict(type='BN'),
                 token_norm_cfg: Dict = dict(type='LN', eps=1e-6),
                 act_cfg: Dict = dict(type='GELU'),
                 init_cfg: Optional[Union[Dict, Sequence[Dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        if with_cp not in (True, False, 'auto'):
            raise ValueError(f"with_cp must be True, False or 'auto', got {with_cp!r}")
        self.with_cp = with_cp if with_cp == 'auto' else bool(with_cp)
        self.arch_settings = self._parse_arch(arch)
        depths = self.arch_settings['depths']
        channels = self.arch_settings['channels']
        self.channels = list(channels)
        self.in_channels = in_channels
        self.out_indices = self._parse_out_indices(out_indices)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(
                f'frozen_stages must be an int in [-1, {self.num_stages}] (-1: none, 0: stem, '
                f'i: stem and the first i stages), got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_norm = out_norm
        self.deploy = False

        self.stem = Stem(in_channels, act_cfg=act_cfg, norm_cfg=norm_cfg)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embeds = ModuleList()
        self.stages = ModuleList()
        prev, cur = STEM_CHANNELS[-1], 0
        for i, (depth, dim) in enumerate(zip(depths, channels)):
            self.patch_embeds.append(PatchEmbed(prev, dim, norm_cfg=token_norm_cfg))
            self.stages.append(Sequential(*[
                HybridPerceptionBlock(
                    dim=dim,
                    num_heads=self.arch_settings['num_heads'][i],
                    sr_ratio=self.arch_settings['sr_ratios'][i],
                    mlp_ratio=mlp_ratio,
                    drop_path=dpr[cur + j],
                    qk_scale=qk_scale,
                    attn_drop=attn_drop_rate,
                    proj_drop=proj_drop_rate,
                    fused_attn=fused_attn,
                    norm_cfg=norm_cfg,
                    token_norm_cfg=token_norm_cfg,
                    act_cfg=act_cfg,
                    with_cp=self.with_cp) for j in range(depth)]))
            prev, cur = dim, cur + depth
        if out_norm:
            for i in self.out_indices:
                self.add_module(f'out_norm{i}', build_norm_layer(token_norm_cfg, channels[i])[1])
        # The convs run channels-last and return the gradients of depth-wise and 1x1 weights
        # in channels-last strides (the same memory: the layouts differ only on size-1
        # axes). DDP checks strides against the parameter's, warns "Grad strides do not
        # match bucket view strides" and copies every step. Channels-last weights get
        # channels-last gradients from every conv here (in-place init, load_state_dict and
        # .to() keep the strides).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data = m.weight.data.to(memory_format=torch.channels_last)
        self._freeze_stages()
        self.register_load_state_dict_pre_hook(_refuse_deploy_weights)

    # ------------------------------------------------------------------ config
    @classmethod
    def _parse_arch(cls, arch) -> Dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(
                    f'Unknown S2AFormer arch {arch!r}. Choose one of {sorted(cls.arch_zoo)} '
                    f'(case-insensitive) or pass a dict with keys {sorted(cls._arch_keys)} '
                    f'and optionally {sorted(cls._optional_arch_keys)}.')
            settings = copy.deepcopy(cls.arch_zoo[key])
        elif isinstance(arch, dict):
            keys = set(arch)
            missing = cls._arch_keys - keys
            unknown = keys - cls._arch_keys - cls._optional_arch_keys
            if missing or unknown:
                raise ValueError(
                    f'Custom S2AFormer arch dict: missing keys {sorted(missing)}, unknown keys '
                    f'{sorted(unknown)}. Required: {sorted(cls._arch_keys)}; optional: '
                    f'{sorted(cls._optional_arch_keys)}.')
            settings = {k: list(v) for k, v in arch.items()}
        else:
            raise TypeError(f'arch must be a str or dict, got {type(arch).__name__}')
        settings.setdefault('sr_ratios', list(cls.default_sr_ratios))
        for key, value in settings.items():
            if len(value) != cls.num_stages or not all(isinstance(v, int) and v > 0 for v in value):
                raise ValueError(
                    f'arch[{key!r}] must be {cls.num_stages} positive ints, got {value}')
        for c, h in zip(settings['channels'], settings['num_heads']):
            if c % h:
                raise ValueError(f'arch channels {settings["channels"]} must be divisible by '
                                 f'num_heads {settings["num_heads"]} stage by stage')
        return settings

    @classmethod
    def _parse_out_indices(cls, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, Sequence) or not out_indices:
            raise TypeError(f'out_indices must be an int or a non-empty sequence of ints, '
                            f'got {out_indices!r}')
        valid = list(range(-cls.num_stages, cls.num_stages))
        normalised = []
        for idx in out_indices:
            if not isinstance(idx, int) or idx not in valid:
                raise ValueError(f'Invalid out_indices {list(out_indices)}: each index must be an '
                                 f'int in {valid[0]}..{valid[-1]} (stages 0-3, negatives from the '
                                 f'end).')
            normalised.append(idx % cls.num_stages)
        if len(set(normalised)) != len(normalised):
            raise ValueError(f'out_indices {list(out_indices)} name the same stage twice.')
        return tuple(sorted(normalised))

    # ------------------------------------------------------------------ weights
    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            # Own loader: safe (weights_only) loading, and missing keys are an error.
            load_backbone_pretrained(self, cfg)
            self._is_init = True
            return
        super().init_weights()
        if cfg is not None:
            return
        print_log('S2AFormer: init_cfg=None, so no pretrained weights are loaded and the backbone '
                  'is trained from scratch (set init_cfg=dict(type="Pretrained", checkpoint=..., '
                  'prefix="backbone.") to start from an ImageNet checkpoint).', logger='current')
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_init(m, std=.02, bias=0.)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                normal_init(m, mean=0., std=(2.0 / fan_out) ** 0.5, bias=0.)
            elif isinstance(m, (nn.LayerNorm, _BatchNorm)):
                constant_init(m, 1., bias=0.)

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer depth of a parameter, for layer-wise learning-rate decay.

        mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` scales the lr of
        a parameter at depth ``d`` by ``layer_decay_rate ** (num_layers - 1 - d)``,
        so the layers nearest the input (generic features a pretrained backbone
        should keep) move least and the head moves at the base lr. It reaches
        this method through ``ImageClassifier.get_layer_depth``, which passes
        ``prefix='backbone.'``. Depths follow the forward pass, as for mmpretrain's
        Swin Transformer:

        * ``0``: the stem;
        * ``1 .. sum(depths)``: one per Hybrid Perception Block, in order; stage
          ``i``'s patch embedding shares the depth of that stage's first block
          (it is the block's input projection), and the output norm ``out_norm{i}``
          that of the stage's last block (it normalises that block's output);
        * ``num_layers - 1 = sum(depths) + 1``: everything that does not start with
          ``prefix`` (the neck and heads after the backbone).

        Deploy-form names (:meth:`switch_to_deploy`) keep these prefixes and get
        the same depths.

        Args:
            param_name (str): Parameter name, as in the model's
                ``named_parameters()``.
            prefix (str): Prefix of the backbone's parameters in that model, e.g.
                ``'backbone.'``; names without it belong to the head. Defaults to
                ``''`` (``param_name`` is relative to this backbone).

        Returns:
            Tuple[int, int]: ``(layer_depth, num_layers)``, with ``layer_depth`` in
            ``[0, num_layers - 1]`` and ``num_layers = sum(depths) + 2``.

        Raises:
            ValueError: ``param_name`` starts with ``prefix`` but names no
                parameter of this backbone (e.g. a wrong ``prefix``), rather than
                silently giving it the head's learning rate.
        """
        depths = self.arch_settings['depths']
        num_layers = sum(depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        parts = name.split('.')
        first_block = [sum(depths[:i]) + 1 for i in range(self.num_stages)]
        try:
            if parts[0] == 'stem':
                return 0, num_layers
            if parts[0] == 'patch_embeds':
                return first_block[int(parts[1])], num_layers
            if parts[0] == 'stages':
                stage, block = int(parts[1]), int(parts[2])
                if 0 <= block < depths[stage]:
                    return first_block[stage] + block, num_layers
            elif parts[0].startswith('out_norm') and len(parts) > 1:
                stage = int(parts[0][len('out_norm'):])
                return first_block[stage] + depths[stage] - 1, num_layers
        except (IndexError, ValueError):
            pass
        raise ValueError(
            f'get_layer_depth: {param_name!r} starts with prefix {prefix!r} but {name!r} is not '
            f'an S2AFormer parameter (stem.*, patch_embeds.<i>.*, stages.<i>.<j>.*, '
            f'out_norm<i>.*). Pass the prefix under which the backbone sits in the model, '
            f"e.g. 'backbone.'.")

    def _freeze_stages(self):
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.stem)
        for i in range(self.frozen_stages):
            frozen += [self.patch_embeds[i], self.stages[i]]
            if i in self.out_indices and self.out_norm:
                frozen.append(getattr(self, f'out_norm{i}'))
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        if mode and self.deploy:
            raise RuntimeError('This S2AFormer is in deploy form (BN folded, inference only) '
                               'and cannot be trained; build a fresh model for training.')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ deploy
    @torch.no_grad()
    def switch_to_deploy(self) -> 'S2AFormer':
        """Re-parameterise for inference, in place; returns ``self``.

        Requires (and sets) eval mode: BN uses its running statistics, so every
        fold is an exact identity and outputs equal the training form in eval
        mode up to rounding. Folded (see the sub-modules for details):

        * stem: the last ``Conv -> GELU -> BN``'s BN (an affine map) folds into the
          input side of stage 1's 2x2/stride-2 patch-embedding conv (unpadded:
          exact). The first two BNs stay: each precedes a zero-padded 3x3 conv,
          where an input-side fold changes the border (and GELU blocks a fold
          into the conv before it). Each ``Conv -> GELU`` runs fused
          (:class:`~s2aformer_mm.models.reparam.FusedConvAct`).
        * each HPB: ``x + DWConv(x)`` -> one DWConv; SSA reduction BN -> its conv;
          LayerNorm affines -> q/k/v/reduction conv, FFN fc1; LIM's first
          grouped 1x1 conv -> ``norm2``; logit scale -> q; FFN ``dw + x`` -> dw,
          ``dw_norm`` and ``fc2_norm`` -> fc2. FFN's first BN stays (see
          :meth:`InvertedResidualFFN.switch_to_deploy`).

        Parameter names change, so a deploy checkpoint loads into a model that
        was built in training form and then switched
        (``tools/deployment/fuse_checkpoint.py`` writes one). Do not use
        ``mmcv.cnn.fuse_conv_bn`` on this model (it would fuse BNs across GELUs).
        """
        if self.deploy:
            return self
        self.eval()
        last_bn = self.stem[-1][-1]
        if isinstance(last_bn, _BatchNorm):
            reparam.fold_affine_into_conv_input(self.patch_embeds[0].proj,
                                                *reparam.bn_affine(last_bn))
            self.stem[-1][-1] = nn.Identity()
        for unit in self.stem:
            unit.fuse_act()
        for stage in self.stages:
            for block in stage:
                block.switch_to_deploy()
        self.deploy = True
        return self.eval()  # also the modules created by the folds

    # ------------------------------------------------------------------ forward
    def _log_auto_checkpointing(self, device: torch.device) -> None:
        """Say once per process what ``with_cp='auto'`` chose on this machine."""
        if S2AFormer._auto_cp_logged:
            return
        S2AFormer._auto_cp_logged = True
        on = device.type == 'cpu'
        print_log(f"S2AFormer with_cp='auto': training on {device.type}, so gradient "
                  f'checkpointing is {"on" if on else "off"}'
                  + (' (same results, about half the activation memory)' if on else '')
                  + '; with_cp=True/False overrides it.', logger='current')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'S2AFormer expects an NCHW tensor with {self.in_channels} channels, got shape '
                f'{tuple(x.shape)}. Convert the image (e.g. grayscale -> RGB) or set in_channels.')
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f'Input {tuple(int(s) for s in x.shape[-2:])} is smaller than '
                f'{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, the network\'s total stride; resize or pad '
                f'the image to at least {MIN_INPUT_SIZE} pixels.')
        if self.with_cp == 'auto' and self.training and not torch.compiler.is_compiling():
            self._log_auto_checkpointing(x.device)
        # Channels-last makes the LayerNorm permutes free and speeds up CPU convs.
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        outs = []
        for i in range(self.num_stages):
            x = self.stages[i](self.patch_embeds[i](x))
            if i in self.out_indices:
                out = x
                if self.out_norm:
                    out = _to_channels_last_ln(getattr(self, f'out_norm{i}'), out)
                outs.append(out.contiguous())
        return tuple(outs)
