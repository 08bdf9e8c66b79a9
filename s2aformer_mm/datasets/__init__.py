"""Small procedurally drawn data sets in the real ImageNet / ADE20K / COCO formats."""
from .synthetic import generate_ade20k, generate_coco, generate_imagenet

__all__ = ['generate_imagenet', 'generate_ade20k', 'generate_coco']
