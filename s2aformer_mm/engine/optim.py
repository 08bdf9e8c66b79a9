"""Mixed precision that is chosen by the machine when the optimizer wrapper is built.

``tools/train.py --amp`` sets ``optim_wrapper.type='MixedPrecisionOptimWrapper'``
(:func:`MixedPrecisionOptimWrapper`), which the config copy in the work dir keeps:
built where CUDA is available it is mmengine's fp16 ``AmpOptimWrapper`` with dynamic
loss scaling (what the libraries' own ``--amp`` selects); built without CUDA it is
:class:`BF16AutocastOptimWrapper`, since ``AmpOptimWrapper`` asserts a GPU. bf16 has
fp32's exponent range, so it needs no loss scaling.
"""
import importlib
from contextlib import contextmanager, nullcontext

import torch
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
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
    """An ``OptimWrapper`` whose ``optim_context`` adds bf16 autocast on the model's
    device (CPU: with mmcv's ``nms`` / ``roi_align`` kept in fp32, :func:`fp32_mmcv_ops`).

    Args:
        **kwargs: :class:`mmengine.optim.OptimWrapper` arguments.
    """

    @contextmanager
    def optim_context(self, model):
        device = next(model.parameters()).device.type
        fp32_ops = fp32_mmcv_ops() if device == 'cpu' else nullcontext()
        with super().optim_context(model), fp32_ops, \
                torch.autocast(device, dtype=torch.bfloat16):
            yield


@OPTIM_WRAPPERS.register_module()
def MixedPrecisionOptimWrapper(**kwargs) -> OptimWrapper:  # noqa: N802 (a config type)
    """Build the mixed-precision wrapper for this machine (the module docstring says
    which); ``kwargs`` are the ``optim_wrapper`` config's. On CUDA ``loss_scale``
    defaults to ``'dynamic'``; without CUDA, ``loss_scale`` and ``use_fsdp`` are
    dropped (bf16 needs no scaler) and ``dtype`` may only be bf16."""
    if torch.cuda.is_available():
        kwargs.setdefault('loss_scale', 'dynamic')
        print_log('Mixed precision: fp16 AmpOptimWrapper (CUDA).', logger='current')
        return AmpOptimWrapper(**kwargs)
    kwargs.pop('loss_scale', None)
    kwargs.pop('use_fsdp', None)
    dtype = kwargs.pop('dtype', None)
    if dtype not in (None, 'bfloat16', torch.bfloat16):
        raise ValueError(f'optim_wrapper.dtype={dtype!r}: without CUDA mixed precision runs in '
                         f'bfloat16; remove dtype or set it to "bfloat16".')
    print_log('Mixed precision: bf16 autocast on the CPU (BF16AutocastOptimWrapper).',
              logger='current')
    return BF16AutocastOptimWrapper(**kwargs)
