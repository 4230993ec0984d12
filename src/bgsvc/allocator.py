"""glibc malloc tuning for a process that allocates and frees image-sized buffers on every
request.

Why: glibc serves allocations above its mmap threshold (128 KiB, raised dynamically up to
32 MiB) with fresh mmap()s and unmaps them on free, so every 2 MP request's buffers (the
RGBA cutout, the encoder's copy of it, its output) were page-faulted in and zeroed by the
kernel again. glibc raises the threshold by itself after such frees, but not in every
run: a fresh node's first requests and one whole bench run paid twice the PNG encode and
compose time (24-26 vs 12 ms, 8-9 vs 4 ms; benchmarks/RESULTS.md). Set explicitly, the
buffers come from the heap and are reused by the next request, from the first one on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# deploy/start.sh's MALLOC_ARENA_MAX, for processes started any other way (bgsvc serve):
# with a glibc arena per stage thread, a 12 MP result's buffers came from thread heaps that
# glibc shrinks eagerly, and were page-faulted in again on every request (postprocess 160
# ms instead of 31 ms; benchmarks/RESULTS.md).
ARENAS = 2


def tune_malloc(mmap_threshold: int, keep_free: int = 0) -> bool:
    """Serve allocations below ``mmap_threshold`` bytes from the heap, and keep up to twice
    that free at the heap's top rather than returning it to the kernel. ``keep_free`` (for
    a process that frees and allocates the same large buffers over and over): every
    allocation from the heap, however large, and up to that many bytes kept free. 0
    leaves glibc's defaults. False where the C library is not glibc (musl has no
    mallopt) or refused."""
    if mmap_threshold <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: malloc left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # glibc documents 32 MiB as the largest mmap threshold on 64-bit; some versions refuse more.
    ok = (
        bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
        and bool(mallopt(M_TRIM_THRESHOLD, min(max(2 * mmap_threshold, keep_free), 2**31 - 1)))
        # glibc maps anything past 32 MiB on its own, and unmaps it when freed.
        and (keep_free <= 0 or bool(mallopt(M_MMAP_MAX, 0)))
        and bool(mallopt(M_ARENA_MAX, ARENAS))
    )
    if not ok:
        log.warning("mallopt refused an mmap threshold of %d bytes", mmap_threshold)
    return ok
