"""Which kind of graph the model code is running in.

The backbone has fast paths that only eager PyTorch (and ``torch.compile``) should
take -- the registered strip-attention operator, oneDNN's fused conv + activation --
and plain-op fall-backs for graphs whose consumers (ONNX, TorchScript, the FLOP
counters) know only standard ops. These two predicates make that choice in one place.
"""
import torch

__all__ = ['in_exported_graph', 'in_eager_mode']


def in_exported_graph() -> bool:
    """Inside torch.export, an ONNX export, a jit trace or script: graphs whose
    consumers (ONNX, TorchScript, FLOP counters) know only standard ops."""
    return (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
            or torch.jit.is_tracing() or torch.jit.is_scripting())


def in_eager_mode() -> bool:
    """Neither compiled nor :func:`in_exported_graph`. ``is_compiling`` goes first:
    dynamo must not trace the other checks."""
    return not torch.compiler.is_compiling() and not in_exported_graph()
