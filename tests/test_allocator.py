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


def _probe(threshold: int) -> str:
    return subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_a_tuned_process_serves_image_sized_buffers_from_the_heap() -> None:
    assert _probe(32 * 1024 * 1024) == "True True"
    # glibc's default: a fresh mapping per buffer, page-faulted in on every request.
    assert _probe(0) == "False False"


def test_zero_leaves_glibc_as_it_is() -> None:
    assert tune_malloc(0) is False
