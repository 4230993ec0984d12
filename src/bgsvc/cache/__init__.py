"""Result caches for identical requests: the interface and key in base.py, the tiers'
choice in factory.py, one module per technology (memory.py, redis.py), tiered.py in front."""

from bgsvc.cache.base import CachedResult, CacheStats, ResultCache, cache_key
from bgsvc.cache.memory import MemoryLRUCache

__all__ = ["CacheStats", "CachedResult", "MemoryLRUCache", "ResultCache", "cache_key"]
