"""Process allocator settings for the command-line tools.

awm_jax allocates and frees arrays of tens to hundreds of megabytes (Gram chunks, read buffers,
XLA's inputs and outputs, the assignment's cost matrix). glibc serves every block above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it when freed, so every such array pays
the kernel's page faults and page zeroing again; on virtual machines whose host takes freed memory
back, that cost a warm 7B-shaped pair 3 s of system time (half a gigabyte per second of fresh
memory), more than its layer scores. The CLIs therefore ask glibc to serve every block from its
heaps (no ``mmap`` of single blocks), so memory freed by one stage is reused by the next with no
fault, and to give back to the system only what exceeds 128 MiB free at the top of the heap: a
gigabyte kept there raised a 16-model audit's peak RSS from 3.0 to 4.2 GB, 128 MiB brought it to
2.4 GB at the same speed (``benchmarks/audit.py``; ``benchmarks/pair.py`` reports a pair's). The
library itself never changes process-wide settings: :func:`tune_allocator` is called by the
command-line entry points only.
"""

from __future__ import annotations

import ctypes
import functools
import os
import ctypes.util
import sys
from pathlib import Path

__all__ = ["memory_limit", "tune_allocator"]

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 128 * 1024 * 1024
_TOP_PAD = 32 * 1024 * 1024


def tune_allocator() -> bool:
    """Applies the settings above when the C library is glibc; returns whether it did."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))


@functools.lru_cache(maxsize=1)
def memory_limit() -> int | None:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit when lower.

    ``None`` when neither can be read. Tensor reads larger than this are refused before
    anything is allocated (an absurd shape in a header must not exhaust the machine).
    """
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cgroup).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    limits = [x for x in limits if x > 0]
    return min(limits) if limits else None
