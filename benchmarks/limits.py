"""Cost of one rate-limit hit and one quota charge, per store (docs/limits.md).

    python -m benchmarks.limits [--hits N] [--concurrency C]

Stores: the node's SQLite file (a temporary directory, WAL, one thread per process) and a
throwaway redis-server on loopback (tests/redis_server.py). Per store: N sequential hits
of one key (each a full call from the event loop: the executor hop or the Redis round
trip included), then N quota charges, then N hits from C concurrent callers (throughput).
Prints a Markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from tests.redis_server import RedisServer

from benchmarks.stats import percentile
from bgsvc.limits.base import Limits, RatePolicy
from bgsvc.limits.sqlite import SqliteLimits

# Never refused: every hit is the write path (read, compare, write).
POLICY = RatePolicy(limit=10_000_000, window_s=1.0, burst=10_000_000)


async def _measure(limits: Limits, hits: int, concurrency: int) -> dict[str, float]:
    await limits.hit("warm", POLICY)
    hit_us: list[float] = []
    for _ in range(hits):
        t0 = time.perf_counter()
        await limits.hit("bench", POLICY)
        hit_us.append((time.perf_counter() - t0) * 1e6)
    quota_us: list[float] = []
    for _ in range(hits):
        t0 = time.perf_counter()
        await limits.consume_quota("bench", 10**12)
        quota_us.append((time.perf_counter() - t0) * 1e6)

    async def caller(n: int) -> None:
        for _ in range(n):
            await limits.hit("bench", POLICY)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(hits // concurrency) for _ in range(concurrency)))
    rate = (hits // concurrency * concurrency) / (time.perf_counter() - t0)
    await limits.aclose()
    return {
        "hit_p50": percentile(hit_us, 50),
        "hit_p99": percentile(hit_us, 99),
        "quota_p50": percentile(quota_us, 50),
        "quota_p99": percentile(quota_us, 99),
        "rate": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    auth = RatePolicy.parse("20/min")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results["SQLite file (one node)"] = asyncio.run(
            _measure(
                SqliteLimits(root / "limits.sqlite3", auth_fail=auth), args.hits, args.concurrency
            )
        )
        (root / "redis").mkdir()
        server = RedisServer(root / "redis")
        server.start()
        try:
            from bgsvc.limits.redis import RedisLimits

            results["Redis (loopback)"] = asyncio.run(
                _measure(
                    RedisLimits(server.url, auth_fail=auth, socket_timeout_s=0.5),
                    args.hits,
                    args.concurrency,
                )
            )
        finally:
            server.stop()
    print(
        f"| store | hit p50 | hit p99 | quota p50 | quota p99 "
        f"| hits/s, {args.concurrency} callers |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['hit_p50']:.0f} µs | {r['hit_p99']:.0f} µs | {r['quota_p50']:.0f} µs "
            f"| {r['quota_p99']:.0f} µs | {r['rate']:,.0f} |"
        )


if __name__ == "__main__":
    main()
