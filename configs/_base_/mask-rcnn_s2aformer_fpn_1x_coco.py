# Mask R-CNN with an S2AFormer backbone on COCO (paper Sec. IV-C): 1x schedule
# (12 epochs), total batch 16, AdamW lr 1e-4. The variant configs
# (configs/mmdet/mask-rcnn_s2aformer_*_fpn_1x_coco.py) add the backbone settings.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './s2aformer_runtime.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='S2AFormer',
        out_indices=(0, 1, 2, 3),
        out_norm=True,
        # Paper: "normalization layers frozen".
        norm_eval=True))

# mmdet's 1x schedule is kept (12 epochs, 500-iter warm-up, steps at 8 and 11);
# only the optimizer changes (AdamW, as for transformer backbones).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
# Total batch 16 = 4 GPUs x 4 images (paper); `--auto-scale-lr` rescales lr
# linearly for another total batch.
train_dataloader = dict(batch_size=4, **_base_.s2aformer_epoch_loader)
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Atomic checkpoints, newest-loadable resume, per-iteration/epoch seeds, and the loader's
# per-epoch worker seeds above (./s2aformer_runtime.py).
default_hooks = dict(checkpoint=_base_.s2aformer_checkpoint_hook)
custom_hooks = [_base_.s2aformer_seed_hook]
