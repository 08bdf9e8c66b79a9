# S2AFormer-S backbone settings shared by every task (inherit this file by path).
#
# No `model = dict(backbone=...)` here: mmengine forbids the same top-level key
# in two sibling `_base_` files, and task configs also inherit the libraries'
# model bases (fpn_r50.py, retinanet_r50_fpn_1x_coco.py, ...), which define
# `model`. A child reads these variables through `_base_` instead:
#     _base_ = ['mmseg::_base_/models/fpn_r50.py', '/path/to/s2aformer_s.py']
#     model = dict(backbone=dict(_delete_=True, **_base_.s2aformer_backbone),
#                  neck=dict(in_channels=_base_.s2aformer_channels))
custom_imports = dict(imports=['s2aformer_mm'], allow_failed_imports=False)

# Stage widths C1..C4 (paper Table II), for necks and heads.
s2aformer_channels = [48, 64, 128, 256]
# The paper gives no drop-path rate. 0.1 as EdgeNeXt-S for the deepest
# (34-block) variant.
# with_cp='auto': gradient checkpointing while training on the CPU, where activations
# live in RAM (same results, about half the activation memory), not on GPUs.
s2aformer_backbone = dict(
    type='S2AFormer', arch='s', drop_path_rate=0.1, with_cp='auto')
# ImageNet-1k classifier checkpoint (keys 'backbone.*') that dense configs start from;
# a missing file is an error naming it. Override on the command line with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
s2aformer_pretrained = dict(
    type='Pretrained', checkpoint='checkpoints/s2aformer_s_in1k.pth', prefix='backbone.')
