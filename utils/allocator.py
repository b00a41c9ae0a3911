"""Keep freed memory in the process instead of handing it back to the kernel (glibc).

PyTorch on CPU allocates its large tensors (activations, gradients) afresh every step with
``malloc``. By default glibc serves blocks above a threshold with ``mmap`` and unmaps them
on ``free``, so the next step faults in fresh zeroed pages: on a 2-core machine that costs
up to a third of a DeepJet training step. Raising the mmap and trim thresholds keeps those
blocks in the heap for reuse (as caching allocators such as jemalloc, or PyTorch's own on
CUDA, do); the process keeps its peak memory instead of returning it between steps. The heap
top is never trimmed: glibc's largest finite threshold (2 GiB) still trims a step that
frees more than that, e.g. a ParticleNet step at batch 512 (peak 4-11 GB), which then faults
its 400k-600k pages in afresh every step: weaver-core's ParticleNet trained at 107-121
instead of 166 jets/s, ours (before its oneDNN linear layers) at 200 instead of 285.
The export's worker processes do the same for uproot's buffers and the staged rows of
each chunk.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB from the heap
TRIM_THRESHOLD = -1  # never trim the heap top (glibc: -1 disables trimming)

_done = [False]


def keep_freed_memory() -> bool:
    """Tune glibc ``malloc`` once per process (see module doc); False where this is not
    glibc (macOS, musl), which then keeps its own allocator's behaviour."""
    if _done[0]:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done[0] = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done[0]
