"""Registers S2AFormer and its classification head in mmpretrain (scope ``mmpretrain``),
and a layer-wise lr-decay constructor for any model with an S2AFormer backbone."""
from functools import partial
from typing import List, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from mmpretrain.models.heads import ClsHead
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..models import S2AFormer
from ..models.reparam import fold_bn_into_conv, merge_linears

MODELS.register_module(module=S2AFormer)


@MODELS.register_module()
class S2AFormerClsHead(ClsHead):
    """The paper's classification head.

    ``1x1 conv (C4 -> 1280, bias) -> BN -> SiLU -> global avg-pool -> dropout``,
    then two ``Linear(1280, num_classes)`` heads (a class head and a
    "distillation" head, as in DeiT/EfficientFormer). The paper never describes
    the second head but its parameter counts (Tables II, VI, VII) require it.
    Without a teacher both heads are trained on the labels (the loss is the mean
    of the two), and their logits are averaged at inference.

    Args:
        num_classes (int): Number of classes (> 0).
        in_channels (int): Channels C4 of the backbone's last stage.
        hidden_channels (int): Width of the 1x1 conv. Defaults to 1280.
        dropout (float): Dropout rate before the linear heads. Defaults to 0.
        norm_cfg (dict): Norm after the 1x1 conv. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation after the norm. Defaults to ``dict(type='SiLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults to
            ``dict(type='TruncNormal', layer='Linear', std=.02)``.
        **kwargs: Passed to mmpretrain's ``ClsHead`` (e.g. ``loss``, ``topk``,
            ``cal_acc``).
    """

    def __init__(self, num_classes: int, in_channels: int, hidden_channels: int = 1280,
                 dropout: float = 0., norm_cfg=dict(type='BN'), act_cfg=dict(type='SiLU'),
                 init_cfg=dict(type='TruncNormal', layer='Linear', std=.02), **kwargs):
        super().__init__(init_cfg=init_cfg, **kwargs)
        if num_classes <= 0:
            raise ValueError(f'num_classes={num_classes} must be a positive integer')
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_channels, hidden_channels, 1)
        self.norm = build_norm_layer(norm_cfg, hidden_channels)[1]
        self.act = build_activation_layer(act_cfg)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_channels, num_classes)
        self.head_dist = nn.Linear(hidden_channels, num_classes)

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        x = self.act(self.norm(self.conv(feats[-1])))
        return self.dropout(x.mean((2, 3)))

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        x = self.pre_logits(feats)
        if self.head_dist is None:  # deploy form: the two heads are merged into self.head
            return self.head(x)
        return (self.head(x) + self.head_dist(x)) / 2

    @torch.no_grad()
    def switch_to_deploy(self) -> 'S2AFormerClsHead':
        """Inference form, in place (sets eval mode); exact up to rounding:
        ``norm`` (BN right after the 1x1 conv) folds into the conv (mmcv's
        ``_fuse_conv_bn``), dropout is the identity in eval, and the average of the
        two linear heads ``(W1 x + b1 + W2 x + b2) / 2`` is the single linear
        ``((W1 + W2) / 2, (b1 + b2) / 2)``. Inference only afterwards."""
        if self.head_dist is None:
            return self
        self.eval()
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            fold_bn_into_conv(self.conv, self.norm)
            self.norm = nn.Identity()
        self.dropout = nn.Identity()
        self.head = merge_linears(self.head, self.head_dist)
        self.head_dist = None
        return self.eval()

    @property
    def deploy(self) -> bool:
        return self.head_dist is None

    def loss(self, feats: Tuple[torch.Tensor], data_samples: List[DataSample], **kwargs) -> dict:
        if self.deploy:
            raise RuntimeError('S2AFormerClsHead is in deploy form (heads merged, BN folded): '
                               'inference only.')
        x = self.pre_logits(feats)
        losses = self._get_loss(self.head(x), data_samples, **kwargs)
        dist = self._get_loss(self.head_dist(x), data_samples, **kwargs)
        losses['loss'] = (losses['loss'] + dist['loss']) / 2
        return losses


# In mmengine's root registry, so mmseg and mmdet configs find it by its bare name.
@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class BackboneLayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-wise lr decay for any model whose ``backbone`` has
    ``get_layer_depth`` (S2AFormer), e.g. mmseg's ``EncoderDecoder`` or mmdet's detectors.

    mmpretrain's constructor asks the whole model for ``get_layer_depth``, which only
    its classifiers forward to their backbone; mmseg's and mmdet's own constructors
    accept only ConvNeXt / BEiT. Here a model without the method uses
    ``model.backbone.get_layer_depth(name, prefix='backbone.')``: the backbone's layers
    decay, everything else (neck, heads) takes the full lr.

    Args:
        optim_wrapper_cfg (dict): The ``optim_wrapper`` config.
        paramwise_cfg (dict): mmpretrain's options, ``layer_decay_rate`` among them.
    """

    def add_params(self, params, module, prefix='', get_layer_depth=None, **kwargs):
        backbone = getattr(module, 'backbone', None)
        if (get_layer_depth is None and not hasattr(module, 'get_layer_depth')
                and hasattr(backbone, 'get_layer_depth')):
            get_layer_depth = partial(backbone.get_layer_depth, prefix='backbone.')
        super().add_params(params, module, prefix=prefix, get_layer_depth=get_layer_depth,
                           **kwargs)
