"""Process-level CPU runtime settings (allocator) for training, testing and benchmarks.

Why: PyTorch's CPU tensors come from glibc ``malloc``. glibc serves blocks above
its mmap threshold (dynamic, at most 32 MiB) with fresh ``mmap`` pages and
returns them to the OS on ``free``, so every large activation of a vision
network is page-faulted in again on first touch. On the 2-core VMs this repo is
developed on, that made a ReLU over a 38 MB map cost 9.3 ms instead of 0.6 ms
(``tools/analysis/benchmark.py --default-allocator`` shows the effect on a whole
model on any machine). Keeping freed blocks in the heap for reuse removes the faults.

The cost is that freed memory stays with the process for reuse, so peak RSS can
exceed the peak of live tensors through fragmentation. Keeping blocks up to 1 GiB
and never trimming made the 2-process Semantic FPN-S recipe (batch 8 of 512^2 per
process, ``with_cp``) peak at 18.1 GB PSS instead of 14.6 GB, so training keeps
blocks < 64 MiB and trims above 256 MiB (15.3 GB). Inference keeps blocks up to
1 GiB: with 64 MiB, S2AFormer-M at batch 16 (77 MB maps) ran 30 % slower.
``S2A_DEFAULT_ALLOCATOR=1`` in the environment keeps glibc's defaults.
"""
import ctypes
import ctypes.util
import os
import platform

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: (blocks up to this size come from the reused heap instead of fresh mmaps, free
#: memory at the top of the heap is returned to the OS only above this), per use.
#: Training keeps larger blocks on glibc's map/unmap, which bounds what fragmentation
#: can hold on to; inference keeps no activations for backward, so reuse them all.
THRESHOLDS = {'train': (64 << 20, 256 << 20), 'inference': (1 << 30, 1 << 30)}
ENV_OPT_OUT = 'S2A_DEFAULT_ALLOCATOR'

_state = {'tuned': None}


def _libc():
    if platform.system() != 'Linux':
        return None
    name = ctypes.util.find_library('c') or 'libc.so.6'
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, 'mallopt') and hasattr(libc, 'gnu_get_libc_version') else None
    except OSError:
        return None


def tune_cpu_allocator(use: str = 'inference') -> str:
    """Make glibc keep large freed blocks for reuse (see the module docstring);
    ``use`` is ``'train'`` or ``'inference'`` (:data:`THRESHOLDS`).

    Applied once per process. Returns a one-line description of what was done, for
    logs: nothing is changed on non-glibc systems or when ``S2A_DEFAULT_ALLOCATOR=1``.
    """
    if _state['tuned'] is not None:
        return _state['tuned']
    mmap_threshold, trim_threshold = THRESHOLDS[use]
    if os.environ.get(ENV_OPT_OUT, '') not in ('', '0'):
        msg = f'CPU allocator: glibc defaults ({ENV_OPT_OUT} is set)'
    else:
        libc = _libc()
        if libc is None:
            msg = 'CPU allocator: unchanged (not glibc)'
        elif (libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1):
            msg = (f'CPU allocator ({use}): glibc keeps freed blocks < {mmap_threshold >> 20} MiB '
                   f'for reuse (no page faults per activation; set {ENV_OPT_OUT}=1 for '
                   f'glibc defaults)')
        else:
            msg = 'CPU allocator: unchanged (mallopt refused the settings)'
    _state['tuned'] = msg
    return msg
