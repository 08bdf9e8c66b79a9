from .s2aformer import (HybridPerceptionBlock, InvertedResidualFFN, LocalInteraction,
                        S2AFormer, StripSelfAttention)

__all__ = ['S2AFormer', 'HybridPerceptionBlock', 'StripSelfAttention', 'LocalInteraction',
           'InvertedResidualFFN']
