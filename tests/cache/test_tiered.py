"""Single flight in one process and the tiered lookup order, without Redis."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from bgsvc.cache import CachedResult, MemoryLRUCache
from bgsvc.cache.tiered import Outcome, TieredCache
from bgsvc.imaging.compose import Box


@dataclass
class Done:
    output: CachedResult


class Counts:
    def __init__(self) -> None:
        self.lookups: list[tuple[str, bool]] = []
        self.coalesced: list[str] = []

    def cache_level_lookup(self, level: str, hit: bool) -> None:
        self.lookups.append((level, hit))

    def cache_coalesced(self, scope: str) -> None:
        self.coalesced.append(scope)


def entry(tag: str = "x") -> CachedResult:
    return CachedResult(
        body=tag.encode(),
        media_type="image/png",
        format="png",
        width=1,
        height=1,
        box=Box(0, 0, 1, 1),
        model="m",
        source_size=(1, 1),
    )


def tiers(counts: Counts, local: bool = True) -> TieredCache:
    return TieredCache(
        MemoryLRUCache(1 << 20) if local else None, None, lock_timeout_s=1.0, observer=counts
    )


@pytest.mark.parametrize("local", [True, False])
def test_concurrent_identical_lookups_compute_once(local: bool) -> None:
    counts = Counts()
    cache = tiers(counts, local)
    calls = 0

    async def compute() -> Done:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return Done(entry("once"))

    async def main() -> list[Outcome[Done]]:
        return await asyncio.gather(*(cache.get_or_compute("k", compute) for _ in range(8)))

    outcomes = asyncio.run(main())
    assert calls == 1
    computed = [o for o in outcomes if o.computed is not None]
    assert len(computed) == 1
    assert {o.entry.body for o in outcomes} == {b"once"}
    assert counts.coalesced == ["process"] * 7


def test_a_failed_leader_lets_a_waiter_compute_instead() -> None:
    cache = tiers(Counts())
    calls = 0

    async def compute() -> Done:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        if calls == 1:
            raise RuntimeError("first attempt fails")
        return Done(entry("second"))

    async def main() -> list[Outcome[Done] | BaseException]:
        return list(
            await asyncio.gather(
                cache.get_or_compute("k", compute),
                cache.get_or_compute("k", compute),
                return_exceptions=True,
            )
        )

    first, second = asyncio.run(main())
    assert isinstance(first, RuntimeError)
    assert isinstance(second, Outcome)
    assert second.entry.body == b"second"
    assert calls == 2


def test_a_waiter_that_times_out_does_not_cancel_the_leader() -> None:
    cache = tiers(Counts())

    async def compute() -> Done:
        await asyncio.sleep(0.1)
        return Done(entry("leader"))

    async def main() -> tuple[Outcome[Done], bool]:
        leader = asyncio.create_task(cache.get_or_compute("k", compute))
        await asyncio.sleep(0)
        timed_out = False
        try:
            async with asyncio.timeout(0.02):
                await cache.get_or_compute("k", compute)
        except TimeoutError:
            timed_out = True
        return await leader, timed_out

    outcome, timed_out = asyncio.run(main())
    assert timed_out
    assert outcome.computed is not None


def test_local_hit_skips_the_computation_and_is_counted() -> None:
    counts = Counts()
    cache = tiers(counts)

    async def compute() -> Done:
        return Done(entry())

    async def main() -> tuple[Outcome[Done], Outcome[Done]]:
        return await cache.get_or_compute("k", compute), await cache.get_or_compute("k", compute)

    first, second = asyncio.run(main())
    assert first.source is None and second.source == "local"
    assert counts.lookups == [("local", False), ("local", True)]
