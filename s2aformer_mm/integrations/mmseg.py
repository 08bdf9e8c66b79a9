"""Registers :class:`S2AFormer` in mmsegmentation's ``MODELS`` (scope ``mmseg``)."""
from mmseg.registry import MODELS

from ..models import S2AFormer

MODELS.register_module(module=S2AFormer)
