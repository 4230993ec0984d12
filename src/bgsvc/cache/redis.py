"""The shared level of the result cache: entries and short compute locks in Redis.

Every call is bounded by a short socket timeout and never retried: Redis is an
optimisation, so a slow or down Redis must cost a request little and fail nothing. After
an error the level answers "unavailable" at once for a moment (no request waits on a
dead socket), then tries again, so it recovers by itself when Redis is back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bgsvc.cache import codec
from bgsvc.cache.base import CachedResult, Unavailable

log = logging.getLogger(__name__)

# Deletes the lock only while it is still ours: once it has expired another node may hold it.
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

# After an error, calls are skipped this long: one probe per second finds Redis back
# quickly, while a blackholed Redis costs one socket timeout per second, not per request.
RETRY_AFTER_ERROR_S = 1.0
# One warning per this many seconds while Redis keeps failing, however many requests.
LOG_EVERY_S = 30.0


class RedisLevel:
    """Results under ``<prefix>r:<key>`` with a jittered TTL, each at most
    ``max_entry_bytes`` encoded (0: any size); locks under ``<prefix>l:<key>``."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        jitter_s: float,
        socket_timeout_s: float,
        prefix: str = "bgsvc:cache:",
        max_entry_bytes: int = 0,
        on_error: Callable[[], None] = lambda: None,
        retry_after_s: float = RETRY_AFTER_ERROR_S,
    ) -> None:
        if not 0 <= jitter_s < ttl_s:
            raise ValueError("jitter_s must be >= 0 and below ttl_s")
        self.ttl_s = ttl_s
        self.jitter_s = jitter_s
        self.max_entry_bytes = max_entry_bytes
        self._prefix = prefix
        self._on_error = on_error
        self._retry_after_s = retry_after_s
        # Connections are made on first use, on the loop that serves requests.
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._unlock = self._client.register_script(_UNLOCK)
        self._skip_until = 0.0
        self._down = False
        self._last_log = -LOG_EVERY_S
        self._unlogged = 0

    def ttl_ms(self) -> int:
        """A fresh TTL for one entry: ttl_s plus or minus up to jitter_s."""
        return round((self.ttl_s + random.uniform(-self.jitter_s, self.jitter_s)) * 1000)

    async def get(self, key: str) -> CachedResult | None:
        """The entry, or None (absent or unreadable); :class:`Unavailable` if Redis is not."""
        self._check()
        try:
            raw = await self._client.get(self._prefix + "r:" + key)
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc
        self._succeeded()
        return self._decode(raw)

    async def put(self, key: str, entry: CachedResult) -> bool:
        """Store with a jittered TTL; False when the entry is over ``max_entry_bytes`` (a
        few such results would take the memory of thousands of ordinary ones), or (counted,
        logged) when Redis is unavailable."""
        try:
            self._check()
        except Unavailable:
            return False
        data = codec.dumps(entry)
        if self.max_entry_bytes and len(data) > self.max_entry_bytes:
            return False
        try:
            await self._client.set(self._prefix + "r:" + key, data, px=self.ttl_ms())
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    async def lock(self, key: str, token: str, timeout_s: float) -> bool:
        """Take the compute lock for ``key`` (SET NX PX); False when another node holds it."""
        self._check()
        try:
            taken = await self._client.set(
                self._prefix + "l:" + key, token, nx=True, px=max(1, round(timeout_s * 1000))
            )
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc
        self._succeeded()
        return bool(taken)

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock if it is still ours; best effort (it expires anyway)."""
        try:
            self._check()
            await self._unlock(keys=[self._prefix + "l:" + key], args=[token])
        except Unavailable:
            return
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def poll(self, key: str) -> tuple[CachedResult | None, bool]:
        """(the entry or None, whether a node still holds the lock) in one round trip."""
        self._check()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._prefix + "r:" + key)
                pipe.exists(self._prefix + "l:" + key)
                raw, held = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc
        self._succeeded()
        return self._decode(raw), bool(held)

    async def aclose(self) -> None:
        """Close the connections (at the end of the app's lifespan)."""
        await self._client.aclose()

    def _decode(self, raw: object) -> CachedResult | None:
        # decode_responses is off, so anything but bytes means no entry.
        if not isinstance(raw, bytes):
            return None
        try:
            return codec.loads(raw)
        except codec.CorruptEntry:
            # Another version's layout or a foreign key: a miss, overwritten once computed.
            return None

    def _check(self) -> None:
        if time.monotonic() < self._skip_until:
            raise Unavailable("skipped after a recent Redis error")

    def _failed(self, exc: BaseException) -> Unavailable:
        self._on_error()
        self._down = True
        now = time.monotonic()
        self._skip_until = now + self._retry_after_s
        if now - self._last_log >= LOG_EVERY_S:
            more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
            log.warning(
                "redis cache unavailable, bypassed: %s: %s%s", type(exc).__name__, exc, more
            )
            self._last_log = now
            self._unlogged = 0
        else:
            self._unlogged += 1
        return Unavailable(str(exc))

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            log.info("redis cache reachable again")
