# RetinaNet + S2AFormer-T, 1x schedule on COCO (paper Table VI), 4 GPUs x 4 images.
_base_ = ['../_base_/retinanet_s2aformer_fpn_1x_coco.py', '../_base_/models/s2aformer_t.py']

model = dict(
    backbone=dict(
        **_base_.s2aformer_backbone,
        init_cfg=_base_.s2aformer_pretrained),
    neck=dict(in_channels=_base_.s2aformer_channels[1:]))
