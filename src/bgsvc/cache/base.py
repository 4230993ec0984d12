"""What a result cache stores, how requests are keyed, and the interface caches implement."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from bgsvc.imaging.compose import Box
from bgsvc.options import RemovalOptions

# Bookkeeping per entry (key, dataclass, dict slot), so a budget of many tiny results
# does not overshoot the memory it promises.
ENTRY_OVERHEAD_BYTES = 512


@dataclass(frozen=True)
class CachedResult:
    """An encoded result and the metadata its response headers need; plain values only,
    so a networked cache can serialise it."""

    body: bytes
    media_type: str
    format: str
    width: int
    height: int
    box: Box
    model: str
    source_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """What this entry counts against a byte budget."""
        return len(self.body) + ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int


class ResultCache(Protocol):
    """A store of finished results keyed by :func:`cache_key`."""

    def get(self, key: str) -> CachedResult | None:
        """The entry for ``key`` (counted as a hit), or None (a miss)."""
        ...

    def put(self, key: str, value: CachedResult) -> None:
        """Store ``value``; a cache may decline (e.g. larger than its budget)."""
        ...

    def stats(self) -> CacheStats:
        """Counters so far."""
        ...


def cache_key(
    data: bytes,
    options: RemovalOptions,
    model: str,
    model_version: str,
    scope: str | None = None,
) -> str:
    """Identifies a result: the upload's exact bytes, every option that shapes the output,
    the model with the version of its weights (a new model file never hits), and whose
    cache it is: with API keys each tenant has its own (``scope``, the key's name), since a
    hit answered in milliseconds would tell one tenant which images another has sent."""
    digest = hashlib.sha256()
    # The options' dataclass repr lists every field in a fixed order.
    parts = [model.encode(), model_version.encode(), repr(options).encode()]
    if scope is not None:
        parts.append(b"tenant:" + scope.encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    digest.update(data)
    return digest.hexdigest()


class Unavailable(Exception):
    """Redis did not answer (or is being skipped after an error); bypass this level."""
