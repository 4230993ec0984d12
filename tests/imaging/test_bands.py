"""The edge step's loops cut into bands: every row once, the same bytes as one thread."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bgsvc.imaging import area, bands, edges


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(3, thread_name_prefix="test-band") as executor:
        yield executor


def recorder() -> tuple[list[tuple[int, int, str]], Callable[[int, int], None]]:
    seen: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def fn(lo: int, hi: int) -> None:
        with lock:
            seen.append((lo, hi, threading.current_thread().name))

    return seen, fn


def test_without_a_spread_the_loop_runs_whole_on_the_calling_thread() -> None:
    seen, fn = recorder()
    bands.over(1000, fn)
    assert seen == [(0, 1000, threading.current_thread().name)]


def test_bands_cover_every_row_once_and_the_caller_takes_the_first(
    pool: ThreadPoolExecutor,
) -> None:
    seen, fn = recorder()
    with bands.spread(pool, 3):
        bands.over(1001, fn)
    rows = sorted((lo, hi) for lo, hi, _ in seen)
    assert rows[0][0] == 0 and rows[-1][1] == 1001 and len(rows) == 4
    assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
    first = next(name for lo, _, name in seen if lo == 0)
    assert first == threading.current_thread().name


def test_short_loops_and_a_spread_of_no_helpers_stay_whole(pool: ThreadPoolExecutor) -> None:
    seen, fn = recorder()
    with bands.spread(pool, 3):
        bands.over(bands.LEAST_ROWS + 5, fn)
    with bands.spread(pool, 0):
        bands.over(1000, fn)
    assert [(lo, hi) for lo, hi, _ in seen] == [(0, bands.LEAST_ROWS + 5), (0, 1000)]


def test_a_band_no_helper_has_started_is_taken_by_the_caller() -> None:
    release = threading.Event()
    with ThreadPoolExecutor(1) as busy:
        busy.submit(release.wait, 10)  # the only helper is held elsewhere
        seen, fn = recorder()
        with bands.spread(busy, 1):
            bands.over(200, fn)
        release.set()
    me = threading.current_thread().name
    assert sorted(seen) == [(0, 100, me), (100, 200, me)]


def test_an_error_in_a_band_is_raised_once_every_band_is_done(pool: ThreadPoolExecutor) -> None:
    done: list[int] = []
    started = threading.Event()

    def fn(lo: int, hi: int) -> None:
        if lo == 0:
            started.wait(5)
            raise ValueError("first band")
        started.set()
        threading.Event().wait(0.05)
        done.append(lo)

    with bands.spread(pool, 1), pytest.raises(ValueError, match="first band"):
        bands.over(200, fn)
    assert done == [100]


@pytest.mark.parametrize("helpers", [1, 3])
def test_the_edge_step_in_bands_gives_the_same_bytes_as_one_thread(
    pool: ThreadPoolExecutor, helpers: int
) -> None:
    rng = np.random.default_rng(7)
    photo = rng.integers(0, 256, (433, 517, 3), np.uint8)
    yy, xx = np.mgrid[0:301, 0:301]
    matte = np.clip(255 - np.hypot(yy - 150, xx - 150) * 2 + rng.normal(0, 20, yy.shape), 0, 255)
    matte = matte.astype(np.uint8)

    def run() -> tuple[np.ndarray, np.ndarray]:
        alpha = edges.upscale_matte(matte, photo)
        return alpha, edges.decontaminate(photo, alpha)

    alone = run()
    with bands.spread(pool, helpers):
        spread = run()
    assert np.array_equal(alone[0], spread[0])
    assert np.array_equal(alone[1], spread[1])
    assert np.count_nonzero((alone[0] > 3) & (alone[0] < 252)) > 0  # there was an edge


def test_an_area_shrinks_region_in_bands_is_the_region_of_the_whole(
    pool: ThreadPoolExecutor,
) -> None:
    image = np.random.default_rng(3).integers(0, 256, (700, 500, 3), np.uint8)
    region = (slice(17, 401), slice(5, 300))
    whole = area.shrink(image, (333, 450))
    with bands.spread(pool, 2):
        part = area.shrink(image, (333, 450), region)
    assert np.array_equal(part, whole[region])


def test_bands_a_closed_pool_cannot_take_are_run_by_the_caller() -> None:
    closed = ThreadPoolExecutor(1)
    closed.shutdown()
    seen, fn = recorder()
    with bands.spread(closed, 2):
        bands.over(300, fn)
    me = threading.current_thread().name
    assert sorted(seen) == [(0, 100, me), (100, 200, me), (200, 300, me)]
