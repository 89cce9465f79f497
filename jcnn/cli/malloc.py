"""glibc's malloc set for a training process (`jcnn train` and `jcnn bench` call
`keep_freed_memory` before JAX starts its threads).

XLA:CPU allocates a step's temporaries (and Eigen its convolutions' patch buffers) anew on every
call. By default glibc serves an allocation above its mmap threshold (at most 32 MiB), or one
that a thread's own arena (a 64 MiB heap) cannot hold, with a fresh `mmap` and returns it to the
system on free, so every page of it faults in again on the next step: ResNet-8's B=128 step took
23,900 page faults a step here (98 MB of XLA temp memory), LeNet's B=2048 step 21,400. With one
arena, no mmap and no trimming, freed memory stays in the heap and the next step reuses it: no
fault after the first step, as with PyTorch's CPU caching. The cost is that the process keeps
its peak heap until it exits. In your own programs, the same settings are the environment
variables `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`, set before
Python starts.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
    """Set glibc's malloc to serve every allocation from one heap and keep what is freed
    (`SETTINGS`); True if it did. Does nothing (False) off glibc, or with `JCNN_MALLOC=system`
    in the environment."""
    if platform.libc_ver()[0] != "glibc" or os.environ.get("JCNN_MALLOC") == "system":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
