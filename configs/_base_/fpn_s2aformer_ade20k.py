# Semantic FPN on ADE20K with an S2AFormer backbone (paper Sec. IV-B): 40k iterations,
# total batch 32, AdamW lr 2e-4, poly decay (power 0.9), 512x512 crops, BN frozen.
# The variant configs (configs/mmseg/fpn_s2aformer_*_ade20k.py) add the backbone
# settings of ./models/s2aformer_*.py; this file alone names no variant.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py',
    './s2aformer_runtime.py'
]

# BN instead of the base's SyncBN, which needs CUDA in distributed runs (mmengine reverts it
# only without a process group), so that one config runs on CPU and GPU alike.
# The base dicts captured SyncBN when they were parsed, so overriding this
# top-level name is not enough: decode_head.norm_cfg is set explicitly below.
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # EncoderDecoder passes a model-level `pretrained` into the backbone.
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='S2AFormer',
        out_indices=(0, 1, 2, 3),
        out_norm=True,
        # Paper: "normalization layers frozen" (BN statistics and affine kept).
        norm_eval=True),
    decode_head=dict(num_classes=150, norm_cfg=norm_cfg))

# Test-time images are resized to the short side 512 and then to a multiple of
# 32, the backbone's total stride, so all four feature maps align exactly.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
# Total batch 32 = 4 GPUs x 8 images (paper); scale lr if you change it.
train_dataloader = dict(batch_size=8)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)
]
# Documents the batch the lr is tuned for; enable with `--auto-scale-lr`.
auto_scale_lr = dict(enable=False, base_batch_size=32)

# Atomic checkpoints, newest-loadable resume, per-iteration seeds (./s2aformer_runtime.py).
default_hooks = dict(checkpoint=_base_.s2aformer_checkpoint_hook)
custom_hooks = [_base_.s2aformer_seed_hook]
