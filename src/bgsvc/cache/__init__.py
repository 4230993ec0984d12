"""Result caches for identical requests: a protocol, a key, and a per-process LRU.

A shared cache across nodes (e.g. Redis) implements :class:`ResultCache` too.
"""

from bgsvc.cache.base import CachedResult, CacheStats, ResultCache, cache_key
from bgsvc.cache.memory import MemoryLRUCache

__all__ = ["CacheStats", "CachedResult", "MemoryLRUCache", "ResultCache", "cache_key"]
