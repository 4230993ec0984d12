"""glibc malloc tuning: image-sized buffers come from the reusable heap, not fresh mmaps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bgsvc.allocator import tune_malloc

# In a fresh interpreter: is an 8 MB buffer (a 2 MP RGBA image) inside the brk heap?
PROBE = """
import sys
import numpy as np
from bgsvc.allocator import tune_malloc
tuned = tune_malloc(int(sys.argv[1]))
buf = np.ones(8_000_000, dtype=np.uint8)
address = buf.ctypes.data
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        print(tuned, lo <= address < hi)
        break
else:
    print(tuned, False)
"""


def _run(code: str, arg: int) -> str:
    """What ``code`` prints in a fresh interpreter given ``arg``."""
    return subprocess.run(
        [sys.executable, "-c", code, str(arg)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def _probe(threshold: int) -> str:
    return _run(PROBE, threshold)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_a_tuned_process_serves_image_sized_buffers_from_the_heap() -> None:
    assert _probe(32 * 1024 * 1024) == "True True"
    # glibc's default: a fresh mapping per buffer, page-faulted in on every request.
    assert _probe(0) == "False False"


def test_zero_leaves_glibc_as_it_is() -> None:
    assert tune_malloc(0) is False


# In a fresh interpreter: the page faults of allocating and filling a 100 MB buffer (a
# 1080p VP9 encoder's token buffer) a second time, after the first was freed.
AGAIN = """
import ctypes, resource, sys
from bgsvc.allocator import tune_malloc
tuned = tune_malloc(32 * 1024 * 1024, int(sys.argv[1]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def fill():
    # C's malloc and memset, as libvpx does it (numpy asks for huge pages).
    buffer = libc.malloc(100_000_000)
    ctypes.memset(buffer, 1, 100_000_000)
    libc.free(buffer)
fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_again(keep_free: int) -> tuple[str, int]:
    tuned, faults = _run(AGAIN, keep_free).split()
    return tuned, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_a_process_that_keeps_what_it_frees_reuses_even_buffers_past_32_mib() -> None:
    # An encoding child kept between segments: its encoder's largest buffers would
    # otherwise be mapped afresh, and faulted in page by page, for every segment.
    tuned, faults = _faults_again(1024**3)
    assert tuned == "True" and faults < 1000
    # Past glibc's largest mmap threshold, a freed buffer is unmapped: 24,000 pages again.
    tuned, faults = _faults_again(0)
    assert tuned == "True" and faults > 20_000
