"""glibc's malloc, told to keep the memory training frees. By default glibc serves every buffer above its mmap
threshold (at most 32 MB) with mmap and unmaps it on free, so each training step page-faults its large
buffers back in (AlexNet's fc6 gradient alone is 151 MB): 8–10 % of an AlexNet step, and a quarter of the
small CNN's step time spent in the kernel (docs/performance.md, "Allocator"). This is what
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=... does, set from inside the process
(`mallopt`), so a plain `python train.py` gets it too. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
KEEP_UP_TO = 2**31 - 1  # bytes of free memory at the top of the heap kept rather than returned (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Serve large buffers from the heap and keep freed memory for reuse; True when glibc took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO) == 1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
