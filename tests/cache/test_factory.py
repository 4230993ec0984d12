"""build_tiers puts the configured levels behind one TieredCache, or none at all."""

from __future__ import annotations

import asyncio

from bgsvc.cache import MemoryLRUCache
from bgsvc.cache.factory import build_tiers
from bgsvc.config import Settings
from bgsvc.metrics import Metrics


def test_no_local_cache_and_no_redis_means_no_tiers() -> None:
    assert build_tiers(None, Settings(), Metrics()) is None


def test_a_local_cache_alone_is_the_only_level() -> None:
    local = MemoryLRUCache(1 << 20)
    tiers = build_tiers(local, Settings(), Metrics())
    assert tiers is not None
    assert tiers.local is local and tiers.shared is None
    asyncio.run(tiers.aclose())


def test_redis_without_the_shared_cache_setting_adds_no_level() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", shared_cache=False)
    assert build_tiers(None, settings, Metrics()) is None


def test_redis_with_the_shared_cache_setting_adds_the_shared_level() -> None:
    from bgsvc.cache.redis import RedisLevel

    settings = Settings(redis_url="redis://127.0.0.1:1/0", shared_cache=True)
    tiers = build_tiers(None, settings, Metrics())
    assert tiers is not None
    assert tiers.local is None and isinstance(tiers.shared, RedisLevel)
    asyncio.run(tiers.aclose())


def test_the_cache_takes_its_own_redis_when_one_is_named() -> None:
    from bgsvc.cache.redis import RedisLevel

    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        cache_redis_url="redis://127.0.0.1:2/3",
        shared_cache_max_entry_bytes=1234,
    )
    tiers = build_tiers(None, settings, Metrics())
    assert tiers is not None and isinstance(tiers.shared, RedisLevel)
    pool = tiers.shared._client.connection_pool.connection_kwargs
    assert (pool["port"], pool["db"]) == (2, 3)
    assert tiers.shared.max_entry_bytes == 1234
    asyncio.run(tiers.aclose())
