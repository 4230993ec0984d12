"""Token buckets, monthly quotas and the failed-auth limiter, on both stores."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from bgsvc.limits.base import RatePolicy
from bgsvc.limits.sqlite import SqliteLimits
from tests.limits.conftest import Store

# One token per 10 s, three at once.
SLOW = RatePolicy(limit=6, window_s=60.0, burst=3)


def unix(year: int, month: int, day: int = 1, hour: int = 0) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_admitted_then_refused_with_retry_after_and_remaining(store: Store) -> None:
    async def main() -> list[tuple[bool, int, int]]:
        limits = store.make()
        try:
            got = []
            for _ in range(4):
                d = await limits.hit("alice", SLOW)
                got.append((d.allowed, d.remaining, d.retry_after_s))
            refused = await limits.hit("alice", SLOW)
            assert refused.limit == 6 and refused.window_s == 60.0
            # Full again 30 s after the burst (3 tokens at 10 s each).
            assert 29.0 < refused.reset_s <= 30.0
            other = await limits.hit("bob", SLOW)
            assert other.allowed and other.remaining == 2
            return got
        finally:
            await limits.aclose()

    assert asyncio.run(main()) == [(True, 2, 0), (True, 1, 0), (True, 0, 0), (False, 0, 10)]


def test_a_refused_hit_takes_nothing_and_a_cost_counts_as_many_hits(store: Store) -> None:
    async def main() -> tuple[bool, bool, int]:
        limits = store.make()
        try:
            too_big = await limits.hit("carol", SLOW, cost=4)
            taken = await limits.hit("carol", SLOW, cost=3)
            after = await limits.hit("carol", SLOW)
            return too_big.allowed, taken.allowed, after.retry_after_s
        finally:
            await limits.aclose()

    # Four never fit a bucket of three; the three taken leave 10 s to wait for one.
    assert asyncio.run(main()) == (False, True, 10)


def test_the_bucket_refills_evenly_with_the_clock(tmp_path: Path) -> None:
    clock = Clock(unix(2025, 3, 10))

    async def main() -> list[tuple[bool, int]]:
        limits = SqliteLimits(
            tmp_path / "l.sqlite3", auth_fail=RatePolicy.parse("3/min"), clock=clock
        )
        try:
            seen = []
            for _ in range(3):
                await limits.hit("k", SLOW)
            for advance in (10.0, 0.0, 5.0, 5.0, 30.0):
                clock.now += advance
                d = await limits.hit("k", SLOW)
                seen.append((d.allowed, d.retry_after_s if not d.allowed else d.remaining))
            return seen
        finally:
            await limits.aclose()

    got = asyncio.run(main())
    # +10 s: one token; +0: none, 10 s to wait; +5: 5 s; +5: one; +30: the full burst.
    assert got == [(True, 0), (False, 10), (False, 5), (True, 0), (True, 2)]


def test_the_bucket_refills_in_real_time_on_the_store_clock(store: Store) -> None:
    """Redis's clock cannot be injected: 10/s and a bounded sleep, counts only."""
    fast = RatePolicy(limit=10, window_s=1.0, burst=5)

    async def main() -> tuple[int, float, int, float]:
        limits = store.make()
        try:
            start = time.monotonic()
            burst = 0
            while (await limits.hit("fast", fast)).allowed:
                burst += 1
            emptied = time.monotonic() - start
            await asyncio.sleep(0.35)
            refilled = 0
            while (await limits.hit("fast", fast)).allowed:
                refilled += 1
            return burst, emptied, refilled, time.monotonic() - start
        finally:
            await limits.aclose()

    burst, emptied, refilled, elapsed = asyncio.run(main())
    # The burst, and a token per 0.1 s the emptying itself took (a busy machine's hits
    # can be that slow): the bucket refills while it is being emptied too.
    assert 5 <= burst <= 5 + int(emptied * 10)
    # 0.35 s at 10/s is 3 tokens at least (below the burst of 5); never more than the time
    # since the bucket was emptied allows.
    assert 3 <= refilled <= int(elapsed * 10) + 1


def test_a_quota_counts_refuses_refunds_and_starts_again_next_month(store: Store) -> None:
    clock = Clock(unix(2025, 1, 31, 23))

    async def main() -> None:
        limits = store.make(clock=clock)
        try:
            first = await limits.consume_quota("q", 3, cost=2)
            assert (first.allowed, first.used, first.limit) == (True, 2, 3)
            assert first.reset_at == unix(2025, 2, 1)
            over = await limits.consume_quota("q", 3, cost=2)
            assert (over.allowed, over.used) == (False, 2)
            last = await limits.consume_quota("q", 3)
            assert (last.allowed, last.used) == (True, 3)
            assert not (await limits.consume_quota("q", 3)).allowed
            await limits.refund_quota("q")
            assert await limits.quota_used("q") == 2
            await limits.refund_quota("q", cost=10)
            assert await limits.quota_used("q") == 0
            await limits.consume_quota("q", 3, cost=3)
            assert await limits.quota_used("other") == 0

            clock.now = unix(2025, 2, 1) + 1
            assert await limits.quota_used("q") == 0
            feb = await limits.consume_quota("q", 3)
            assert (feb.allowed, feb.used, feb.reset_at) == (True, 1, unix(2025, 3, 1))
            clock.now = unix(2025, 12, 15)
            dec = await limits.consume_quota("q", 3)
            assert dec.reset_at == unix(2026, 1, 1)
        finally:
            await limits.aclose()

    asyncio.run(main())


def test_the_quota_counter_in_redis_expires_after_its_month(store: Store) -> None:
    if store.server is None:
        return
    clock = Clock(time.time())

    async def main() -> None:
        limits = store.make(clock=clock)
        try:
            decision = await limits.consume_quota("exp", 10)
        finally:
            await limits.aclose()
        with store.server.client() as client:  # type: ignore[union-attr]
            (key,) = client.keys("bgsvc:limits:quota:exp:*")
            ttl = client.ttl(key)
        # Until a day after the month ends: a node clock a little behind still finds it.
        left = decision.reset_at - clock.now
        assert left + 86400 - 1 <= ttl <= left + 86400 + 2

    asyncio.run(main())


def test_failed_authentications_are_limited_per_address(store: Store) -> None:
    async def main() -> None:
        limits = store.make(auth_fail="3/min")
        try:
            admitted = [(await limits.hit_failed_auth("203.0.113.7")).allowed for _ in range(4)]
            assert admitted == [True, True, True, False]
            refused = await limits.hit_failed_auth("203.0.113.7")
            assert (refused.limit, refused.retry_after_s) == (3, 20)
            assert (await limits.hit_failed_auth("2001:db8::1")).allowed
            # The address's bucket is not a key's bucket of the same name.
            assert (await limits.hit("203.0.113.7", SLOW)).allowed
        finally:
            await limits.aclose()

    asyncio.run(main())


def test_two_limiters_on_one_store_share_the_bucket(store: Store) -> None:
    """Two gunicorn workers (SQLite) or two nodes (Redis) see one bucket per key."""

    async def main() -> list[bool]:
        one, two = store.make(), store.make()
        try:
            return [(await lim.hit("shared", SLOW)).allowed for lim in (one, two, one, two)]
        finally:
            await one.aclose()
            await two.aclose()

    assert asyncio.run(main()) == [True, True, True, False]
