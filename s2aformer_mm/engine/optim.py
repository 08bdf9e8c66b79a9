"""``--amp`` on CPU: bf16 autocast in an ``OptimWrapper``.

mmengine's ``AmpOptimWrapper`` asserts a GPU when it is built. On CPU the tools
select :class:`BF16AutocastOptimWrapper` instead: the forward/loss pass of
``train_step`` runs under ``torch.autocast('cpu', dtype=torch.bfloat16)``; bf16
has fp32's exponent range, so no loss scaling is needed.
"""
import importlib
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


def _fp32_args(fn, cast_back: bool):
    """Call ``fn`` with bf16 tensors cast to fp32; with ``cast_back`` float results
    return as bf16 (roi_align: mmdet writes them into a bf16 buffer). nms results
    stay fp32 so that fp32 boxes keep their precision."""

    def back(x):
        return x.to(torch.bfloat16) if torch.is_tensor(x) and x.is_floating_point() else x

    def wrapped(*args, **kwargs):
        if not any(torch.is_tensor(a) and a.dtype == torch.bfloat16 for a in args):
            return fn(*args, **kwargs)
        args = [a.float() if torch.is_tensor(a) and a.dtype == torch.bfloat16 else a
                for a in args]
        out = fn(*args, **kwargs)
        if not cast_back:
            return out
        return tuple(back(o) for o in out) if isinstance(out, tuple) else back(out)

    wrapped.__wrapped__ = fn
    return wrapped


@contextmanager
def fp32_mmcv_ops():
    """Run mmcv's ``nms`` and ``roi_align`` in fp32 inside the block.

    Their CPU kernels only accept fp32 (two-stage detectors such as Mask R-CNN
    hit both). ``batched_nms`` and ``RoIAlign.forward`` look these functions up
    as module globals at call time, so swapping the globals for the duration of
    the autocast region is enough; the originals are always restored.
    """
    patched = []
    for mod_name, attr, cast_back in (('mmcv.ops.nms', 'nms', False),
                                      ('mmcv.ops.roi_align', 'roi_align', True)):
        mod = importlib.import_module(mod_name)
        original = getattr(mod, attr)
        setattr(mod, attr, _fp32_args(original, cast_back))
        patched.append((mod, attr, original))
    try:
        yield
    finally:
        for mod, attr, original in patched:
            setattr(mod, attr, original)


@OPTIM_WRAPPERS.register_module()
class BF16AutocastOptimWrapper(OptimWrapper):
    """An ``OptimWrapper`` whose ``optim_context`` adds CPU bf16 autocast."""

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), fp32_mmcv_ops(), \
                torch.autocast('cpu', dtype=torch.bfloat16):
            yield
