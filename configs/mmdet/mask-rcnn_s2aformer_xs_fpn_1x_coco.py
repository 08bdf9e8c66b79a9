# Mask R-CNN + S2AFormer-XS, 1x schedule on COCO (paper Table VI), 4 GPUs x 4 images.
_base_ = ['../_base_/mask-rcnn_s2aformer_fpn_1x_coco.py', '../_base_/models/s2aformer_xs.py']

model = dict(
    backbone=dict(
        **_base_.s2aformer_backbone,
        # ImageNet-1k classifier checkpoint (keys 'backbone.*'); a missing file
        # raises FileNotFoundError. Override on the command line with
        #   --cfg-options model.backbone.init_cfg.checkpoint=PATH
        # or train from scratch with --cfg-options model.backbone.init_cfg=None.
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/s2aformer_xs_in1k.pth',
            prefix='backbone.')),
    neck=dict(in_channels=_base_.s2aformer_channels))
