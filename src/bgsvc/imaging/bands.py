"""The edge step's loops cut into bands over cores that would otherwise stand idle.

A request alone in its process has the cores its forward pass has just used to itself,
and its edge step (tens of milliseconds of a 2 MP photo on one core) is all of its
latency after that pass. Under load, other requests' passes and stages fill those cores
already, and a band each would only contend with them. So whoever knows the load decides
(the service: only for a request that is the process's only one) by giving a pool and a
number of helpers for the duration of a call (spread()); without that, every loop here
runs whole on the calling thread.

Each band is computed exactly as the whole would compute it (rows are independent, or
carry their own running sums), so the result does not depend on the split.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from contextvars import ContextVar

_helpers: ContextVar[tuple[Executor, int] | None] = ContextVar("bgsvc_band_helpers", default=None)

# A band shorter than this is not worth a hand-off (a few microseconds each way).
LEAST_ROWS = 32


@contextmanager
def spread(pool: Executor | None, helpers: int) -> Iterator[None]:
    """Within the block, this thread's loops may hand bands to ``helpers`` threads of
    ``pool`` (none: the block runs as without it)."""
    token = _helpers.set((pool, helpers) if pool is not None and helpers > 0 else None)
    try:
        yield
    finally:
        _helpers.reset(token)


def over(n: int, fn: Callable[[int, int], None], least: int = LEAST_ROWS) -> None:
    """``fn(lo, hi)`` over [0, ``n``) in bands of at least ``least``: the calling thread
    takes the first, helpers (spread()) the others; a band no helper has started by the
    time the caller is done, the caller takes too. Returns once every band is done, and
    raises the first band's error, if any."""
    given = _helpers.get()
    parts = 1 if given is None else min(1 + given[1], n // max(1, least))
    if given is None or parts <= 1:
        fn(0, n)
        return
    pool = given[0]
    cuts = [n * i // parts for i in range(parts + 1)]
    bands = list(itertools.pairwise(cuts))
    handed: list[tuple[int, int, Future[None] | None]] = []
    for lo, hi in bands[1:]:
        try:
            handed.append((lo, hi, pool.submit(fn, lo, hi)))
        except RuntimeError:  # the pool is shutting down: the caller keeps the band
            handed.append((lo, hi, None))
    error: BaseException | None = None
    try:
        fn(*bands[0])
    except BaseException as exc:  # the helpers still write into the caller's arrays
        error = exc
    for lo, hi, future in handed:
        try:
            if future is None or future.cancel():
                if error is None:
                    fn(lo, hi)
            else:
                future.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
