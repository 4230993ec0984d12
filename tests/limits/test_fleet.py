"""The issue's fleet property at the limiter: N/min across 3 nodes admits N +- 10%.

Three processes (three nodes on one Redis; or three gunicorn workers on one node's SQLite
file) hammer one key at 100/s with a burst of 50 for 2 s. A token bucket admits the burst
plus the rate times the time between the first and the last hit: the admitted total must
be within 10% of it. A limit per process would admit three times as much.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from bgsvc.errors import LimitsUnavailable
from bgsvc.limits.base import RatePolicy
from tests.limits.conftest import Store

POLICY = RatePolicy(limit=100, window_s=1.0, burst=50)
PROCESSES = 3
TASKS = 8
SECONDS = 2.0


def hammer(kind: str, target: str, start: Barrier, results: Any) -> None:
    """One process: TASKS callers for SECONDS; puts (admitted, refused, errors, t0, t1)."""

    async def main() -> tuple[int, int, int, float, float]:
        store = Store(kind, target)
        limits = store.make(fail_open=False)
        counts = {"admitted": 0, "refused": 0, "errors": 0}

        async def caller(deadline: float) -> None:
            while time.time() < deadline:
                try:
                    decision = await limits.hit("fleet", POLICY)
                except LimitsUnavailable:
                    counts["errors"] += 1
                else:
                    counts["admitted" if decision.allowed else "refused"] += 1

        await limits.hit("warm-up", POLICY)  # connect before the clock starts
        start.wait(60)  # every process connected: they start together
        t0 = time.time()
        await asyncio.gather(*(caller(t0 + SECONDS) for _ in range(TASKS)))
        t1 = time.time()
        await limits.aclose()
        return counts["admitted"], counts["refused"], counts["errors"], t0, t1

    results.put(asyncio.run(main()))


def test_a_rate_across_three_processes_admits_the_bucket_within_ten_percent(
    store: Store, tmp_path: Path, capsys: Any
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results = context.Queue()
    procs = [
        context.Process(target=hammer, args=(store.kind, store.target, start, results))
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        got = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    admitted = sum(g[0] for g in got)
    refused = sum(g[1] for g in got)
    errors = sum(g[2] for g in got)
    span = max(g[4] for g in got) - min(g[3] for g in got)
    expected = POLICY.burst + POLICY.limit / POLICY.window_s * span
    with capsys.disabled():
        print(
            f"\n[{store.kind}] {PROCESSES} processes, {span:.2f} s: admitted {admitted}, "
            f"expected {expected:.0f} ({admitted / expected - 1:+.1%}), refused {refused}, "
            f"store errors {errors}"
        )
    assert errors == 0
    assert refused > admitted  # the key was hammered well past its rate the whole time
    assert abs(admitted - expected) <= 0.10 * expected
