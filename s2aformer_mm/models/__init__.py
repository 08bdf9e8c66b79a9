"""The S2AFormer model: the backbone and its blocks (:mod:`.s2aformer`), the
strip-attention operator (:mod:`.strip_attention`) and the deploy-form folds
(:mod:`.reparam`). Of the rest of the package it imports only
:mod:`s2aformer_mm.checkpoint` (Pretrained loading); the libraries' registrations
(:mod:`s2aformer_mm.integrations`) and :mod:`s2aformer_mm.apis` build on it."""
from .reparam import is_deployed, switch_to_deploy
from .s2aformer import (HybridPerceptionBlock, InvertedResidualFFN, LocalInteraction,
                        S2AFormer, StripSelfAttention)

__all__ = ['S2AFormer', 'HybridPerceptionBlock', 'StripSelfAttention', 'LocalInteraction',
           'InvertedResidualFFN', 'switch_to_deploy', 'is_deployed']
