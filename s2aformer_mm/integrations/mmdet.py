"""Registers :class:`S2AFormer` in mmdetection's ``MODELS`` (scope ``mmdet``)."""
from mmdet.registry import MODELS

from ..models import S2AFormer

MODELS.register_module(module=S2AFormer)
