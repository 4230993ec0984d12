from __future__ import annotations

import threading

import pytest

from bgsvc.cache import CachedResult, MemoryLRUCache, cache_key
from bgsvc.cache.base import ENTRY_OVERHEAD_BYTES
from bgsvc.imaging.compose import Box
from bgsvc.options import RemovalOptions


def entry(size: int, tag: str = "") -> CachedResult:
    return CachedResult(
        body=b"x" * size,
        media_type="image/png",
        format="png",
        width=1,
        height=1,
        box=Box(0, 0, 1, 1),
        model=tag or "m",
        source_size=(1, 1),
    )


def test_hit_returns_the_stored_entry_and_counts() -> None:
    cache = MemoryLRUCache(10_000)
    assert cache.get("a") is None
    cache.put("a", entry(10))
    got = cache.get("a")
    assert got is not None and got.body == b"x" * 10
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    assert stats.bytes == 10 + ENTRY_OVERHEAD_BYTES


def test_least_recently_used_is_evicted_when_over_budget() -> None:
    per = 100 + ENTRY_OVERHEAD_BYTES
    cache = MemoryLRUCache(2 * per)
    cache.put("a", entry(100))
    cache.put("b", entry(100))
    cache.get("a")  # a is now the most recent
    cache.put("c", entry(100))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.stats().evictions == 1
    assert cache.stats().bytes <= 2 * per


def test_entry_larger_than_the_budget_is_not_stored() -> None:
    cache = MemoryLRUCache(100)
    cache.put("big", entry(1000))
    assert cache.get("big") is None
    assert cache.stats().bytes == 0


def test_replacing_a_key_does_not_double_count_its_bytes() -> None:
    cache = MemoryLRUCache(10_000)
    cache.put("a", entry(100))
    cache.put("a", entry(200))
    assert cache.stats().bytes == 200 + ENTRY_OVERHEAD_BYTES
    assert cache.stats().entries == 1


def test_zero_budget_stores_nothing_and_negative_is_refused() -> None:
    cache = MemoryLRUCache(0)
    cache.put("a", entry(0))
    assert cache.get("a") is None
    with pytest.raises(ValueError):
        MemoryLRUCache(-1)


def test_concurrent_puts_keep_the_budget() -> None:
    per = 50 + ENTRY_OVERHEAD_BYTES
    cache = MemoryLRUCache(10 * per)

    def work(offset: int) -> None:
        for i in range(200):
            cache.put(f"{offset}-{i}", entry(50))
            cache.get(f"{offset}-{i // 2}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert stats.bytes == stats.entries * per <= 10 * per


def test_key_changes_with_bytes_options_model_and_version() -> None:
    base = cache_key(b"img", RemovalOptions(), "m", "v1")
    assert base == cache_key(b"img", RemovalOptions(), "m", "v1")
    assert base != cache_key(b"img2", RemovalOptions(), "m", "v1")
    assert base != cache_key(b"img", RemovalOptions(format="webp"), "m", "v1")
    assert base != cache_key(b"img", RemovalOptions(crop=True), "m", "v1")
    assert base != cache_key(b"img", RemovalOptions(), "other", "v1")
    assert base != cache_key(b"img", RemovalOptions(), "m", "v2")


def test_the_cache_key_of_a_tenant_is_its_own() -> None:
    shared = cache_key(b"img", RemovalOptions(), "m", "v1")
    assert shared == cache_key(b"img", RemovalOptions(), "m", "v1", None)
    assert cache_key(b"img", RemovalOptions(), "m", "v1", "a") != shared
    assert cache_key(b"img", RemovalOptions(), "m", "v1", "a") != cache_key(
        b"img", RemovalOptions(), "m", "v1", "b"
    )
