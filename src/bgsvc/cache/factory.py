"""The one place that picks the cache tiers from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bgsvc.cache.base import ResultCache
from bgsvc.cache.tiered import TieredCache

if TYPE_CHECKING:
    from bgsvc.config import Settings
    from bgsvc.metrics import Metrics


class _CacheObserver:
    """The tiered cache's counters on the service's metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def cache_level_lookup(self, level: str, hit: bool) -> None:
        self.metrics.cache_level_lookups.labels(level, "hit" if hit else "miss").inc()

    def cache_coalesced(self, scope: str) -> None:
        self.metrics.cache_coalesced.labels(scope).inc()


def build_tiers(
    local: ResultCache | None, settings: Settings, metrics: Metrics
) -> TieredCache | None:
    """The local LRU and, with BGSVC_CACHE_REDIS_URL or BGSVC_REDIS_URL (and
    BGSVC_SHARED_CACHE), the shared level behind it; None when neither is configured (no
    cache, no single flight)."""
    shared = None
    url = settings.cache_redis_url or settings.redis_url
    if url and settings.shared_cache:
        try:
            from bgsvc.cache.redis import RedisLevel
        except ModuleNotFoundError as exc:
            raise RuntimeError(
                "BGSVC_REDIS_URL is set but redis-py is not installed: pip install 'bgsvc[redis]'"
            ) from exc

        errors = metrics.cache_errors.labels("redis")
        shared = RedisLevel(
            url,
            max_entry_bytes=settings.shared_cache_max_entry_bytes,
            ttl_s=settings.cache_ttl_s,
            jitter_s=settings.cache_ttl_jitter_s,
            socket_timeout_s=settings.redis_socket_timeout_s,
            on_error=errors.inc,
        )
    if local is None and shared is None:
        return None
    observer = _CacheObserver(metrics)
    return TieredCache(
        local, shared, lock_timeout_s=settings.cache_lock_timeout_s, observer=observer
    )
