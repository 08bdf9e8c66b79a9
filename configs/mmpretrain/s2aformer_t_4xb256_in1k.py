# S2AFormer-T on ImageNet-1k (paper Table II), 4 GPUs x 256 images.
_base_ = ['../_base_/s2aformer_4xb256_in1k.py', '../_base_/models/s2aformer_t.py']

model = dict(
    backbone=_base_.s2aformer_backbone,
    head=dict(in_channels=_base_.s2aformer_channels[-1]))
