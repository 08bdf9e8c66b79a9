# What makes an S2AFormer run safe to kill and exact to resume, and lets one config run on
# GPUs and CPUs. The task bases (./fpn_s2aformer_ade20k.py, ./retinanet_..., ./mask-rcnn_...,
# ./s2aformer_4xb256_in1k.py) inherit this file and put each piece in place, so that every
# launcher that reads our configs gets them: tools/train.py here, the libraries' own
# tools/train.py, `mim train`, a downstream repository's tools. The types are registered
# by `s2aformer_mm`, which the task configs import (custom_imports of ./models/*.py).
#
# Each piece can be switched off in a config that inherits ours, as shown below it.

# Checkpoints (s2aformer_mm/engine/checkpointing.py): the new file is written atomically
# (temporary file + rename) before the oldest is deleted, so a kill while saving leaves the
# previous checkpoint; resuming without a path picks the newest checkpoint that loads.
# Off: default_hooks = dict(checkpoint=dict(type='CheckpointHook', backend_args=None))
s2aformer_checkpoint_hook = dict(
    type='SafeCheckpointHook', backend_args=dict(backend='atomic_local'))

# Random numbers per iteration (and per epoch) from the run's seed
# (s2aformer_mm/engine/randomness.py): a resumed run draws the drop-path masks and
# augmentations of the uninterrupted one. Off: leave IterationSeedHook out of custom_hooks.
s2aformer_seed_hook = dict(type='IterationSeedHook')

# Epoch-based loaders (classification, detection): workers restart every epoch and are
# seeded from (seed, epoch, rank), so each epoch draws new augmentations and a resumed run
# repeats the original's. mmengine's default seeds workers from (seed, rank, worker) only.
# Iteration-based runs (segmentation) keep mmengine's loader: its resume replays the batches.
# Off: train_dataloader = dict(worker_init_fn=dict(type=YOUR_FUNCTION)) or persistent workers.
s2aformer_epoch_loader = dict(
    persistent_workers=False, worker_init_fn=dict(type='seed_worker_from_loader'))

# Multi-process training: mmengine's DDP on GPUs; on CPUs (gloo) without device_ids and
# with SyncBN reverted, decided when the wrapper is built (s2aformer_mm/engine/distributed.py).
model_wrapper_cfg = dict(type='DeviceAwareDistributedDataParallel')
