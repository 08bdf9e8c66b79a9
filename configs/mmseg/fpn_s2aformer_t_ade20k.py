# Semantic FPN + S2AFormer-T on ADE20K (paper Table IV), 4 GPUs x 8 images.
_base_ = ['../_base_/fpn_s2aformer_ade20k.py', '../_base_/models/s2aformer_t.py']

model = dict(
    backbone=dict(
        **_base_.s2aformer_backbone,
        # ImageNet-1k classifier checkpoint (keys 'backbone.*'); a missing file
        # raises FileNotFoundError. Override on the command line with
        #   --cfg-options model.backbone.init_cfg.checkpoint=PATH
        # or train from scratch with --cfg-options model.backbone.init_cfg=None.
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/s2aformer_t_in1k.pth',
            prefix='backbone.')),
    neck=dict(in_channels=_base_.s2aformer_channels))
