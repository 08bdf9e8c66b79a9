# Semantic FPN + S2AFormer-T on ADE20K (paper Table IV), 4 GPUs x 8 images.
_base_ = ['../_base_/fpn_s2aformer_ade20k.py', '../_base_/models/s2aformer_t.py']

model = dict(
    backbone=dict(
        **_base_.s2aformer_backbone,
        init_cfg=_base_.s2aformer_pretrained),
    neck=dict(in_channels=_base_.s2aformer_channels))
