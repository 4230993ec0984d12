"""Local LRU in front of the shared Redis level, with single flight at both scopes.

A result is computed once per key however many identical requests arrive together: in a
process the first request computes and the others await it; across nodes the first to
take the Redis lock computes and the others poll Redis for its result, computing it
themselves only when the lock holder does not deliver within the lock's timeout.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

from bgsvc.cache.base import CachedResult, ResultCache, Unavailable

if TYPE_CHECKING:
    # Only for types: redis-py imports OpenTelemetry's SDK at import time (redis 8), which
    # must not load in a process that has no Redis configured and tracing off.
    from bgsvc.cache.redis import RedisLevel

# Where an answer came from: a level, another request of this process, another node.
Source = Literal["local", "redis", "process", "cluster"]

# Polling the shared level while another node computes: quick at first (a result that
# is nearly done), then no more than ten round trips a second per waiting request.
_POLL_FIRST_S = 0.01
_POLL_MAX_S = 0.1
# A lock released without a result (its holder failed) is retried this often before
# computing without one.
_LOCK_ATTEMPTS = 3


class Computed(Protocol):
    """What a computation returns: at least the entry to cache."""

    @property
    def output(self) -> CachedResult: ...


R = TypeVar("R", bound=Computed)


class Observer(Protocol):
    """Counters the cache reports to (bgsvc.metrics.Metrics)."""

    def cache_level_lookup(self, level: str, hit: bool) -> None: ...

    def cache_coalesced(self, scope: str) -> None: ...


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """The entry, plus the computation's own result when this call computed it (a miss);
    otherwise ``source`` says where the entry came from."""

    entry: CachedResult
    computed: R | None = None
    source: Source | None = None


class TieredCache:
    """``local`` and ``shared`` are both optional: either alone works, single flight in
    the process included."""

    def __init__(
        self,
        local: ResultCache | None,
        shared: RedisLevel | None,
        *,
        lock_timeout_s: float,
        observer: Observer,
    ) -> None:
        self.local = local
        self.shared = shared
        self.lock_timeout_s = lock_timeout_s
        self._observer = observer
        # None as a flight's result means its leader failed: a waiter then tries itself.
        self._flights: dict[str, asyncio.Future[CachedResult | None]] = {}

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[R]]) -> Outcome[R]:
        """The entry for ``key`` from the nearest level that has it, else computed once."""
        while True:
            if self.local is not None:
                entry = self.local.get(key)
                self._observer.cache_level_lookup("local", entry is not None)
                if entry is not None:
                    return Outcome(entry, source="local")
            flight = self._flights.get(key)
            if flight is None:
                break
            # shield: a waiter that times out must not cancel the leader's flight.
            shared_entry = await asyncio.shield(flight)
            if shared_entry is not None:
                self._observer.cache_coalesced("process")
                return Outcome(shared_entry, source="process")

        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            outcome = await self._lead(key, compute)
        except BaseException:
            flight.set_result(None)
            raise
        finally:
            del self._flights[key]
        if not flight.done():
            flight.set_result(outcome.entry)
        return outcome

    async def _lead(self, key: str, compute: Callable[[], Awaitable[R]]) -> Outcome[R]:
        shared = self.shared
        if shared is None:
            return await self._compute(key, compute, store_shared=False)
        try:
            for _ in range(_LOCK_ATTEMPTS):
                entry = await shared.get(key)
                self._observer.cache_level_lookup("redis", entry is not None)
                if entry is not None:
                    self._keep_local(key, entry)
                    return Outcome(entry, source="redis")
                token = secrets.token_hex(16)
                if await shared.lock(key, token, self.lock_timeout_s):
                    try:
                        return await self._compute(key, compute, store_shared=True)
                    finally:
                        await shared.unlock(key, token)
                entry, timed_out = await self._await_other_node(shared, key)
                if entry is not None:
                    self._keep_local(key, entry)
                    self._observer.cache_coalesced("cluster")
                    return Outcome(entry, source="cluster")
                if timed_out:
                    break
        except Unavailable:
            return await self._compute(key, compute, store_shared=False)
        return await self._compute(key, compute, store_shared=True)

    async def _await_other_node(
        self, shared: RedisLevel, key: str
    ) -> tuple[CachedResult | None, bool]:
        """(the other node's entry or None, whether the lock timeout passed first)."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = _POLL_FIRST_S
        while time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, _POLL_MAX_S)
            entry, held = await shared.poll(key)
            if entry is not None:
                return entry, False
            if not held:
                return None, False
        return None, True

    async def _compute(
        self, key: str, compute: Callable[[], Awaitable[R]], *, store_shared: bool
    ) -> Outcome[R]:
        result = await compute()
        self._keep_local(key, result.output)
        if store_shared and self.shared is not None:
            await self.shared.put(key, result.output)
        return Outcome(result.output, computed=result)

    def _keep_local(self, key: str, entry: CachedResult) -> None:
        if self.local is not None:
            self.local.put(key, entry)

    async def aclose(self) -> None:
        """Close the shared level's connections."""
        if self.shared is not None:
            await self.shared.aclose()
