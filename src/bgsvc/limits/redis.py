"""Limits shared by every node through Redis: each check is one atomic script.

The bucket's clock is Redis's own (TIME inside the script), so the nodes' clocks do not
matter to it; only the quota's month label comes from the node's clock (a skew of
seconds matters at a month's first second only). Every call is bounded by
BGSVC_REDIS_SOCKET_TIMEOUT_S and never retried; failures go to the :class:`Guard`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bgsvc.limits import gcra
from bgsvc.limits.base import QuotaDecision, RateDecision, RatePolicy
from bgsvc.limits.guard import Guard

# GCRA (see gcra.py): ARGV = interval_us, tolerance_us, cost. Returns {allowed, now, tat}.
# string.format, not tostring: Lua's tostring keeps 14 digits, a TAT in microseconds 16.
_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat - tolerance > now then
    return {0, now, tat}
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%d', ttl_ms))
return {1, now, new_tat}
"""

# ARGV = cost, monthly limit, seconds to live. Returns {allowed, used}.
_CONSUME = """
local cost, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local used = redis.call('INCRBY', KEYS[1], cost)
if used > limit then
    redis.call('DECRBY', KEYS[1], cost)
    return {0, used - cost}
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, used}
"""

# Never below zero: a refund racing the month's expiry must not leave a negative count.
_REFUND = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = math.min(used, tonumber(ARGV[1]))
if back > 0 then
    return redis.call('DECRBY', KEYS[1], back)
end
return used
"""

# A month's counter outlives the month by a day, for node clocks a little behind.
QUOTA_GRACE_S = 86400


class RedisLimits:
    """:class:`bgsvc.limits.base.Limits` in Redis, under ``<prefix>{rate,auth,quota}:``."""

    def __init__(
        self,
        url: str,
        *,
        auth_fail: RatePolicy,
        socket_timeout_s: float,
        fail_open: bool = True,
        on_error: Callable[[str], None] = lambda action: None,
        clock: Callable[[], float] = time.time,
        prefix: str = "bgsvc:limits:",
    ) -> None:
        self.auth_fail = auth_fail
        self._clock = clock
        self._prefix = prefix
        self._guard = Guard(
            store="redis", errors=(RedisError, OSError), fail_open=fail_open, on_error=on_error
        )
        # Connections are made on first use, on the loop that serves requests.
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._bucket_script = self._client.register_script(_BUCKET)
        self._consume_script = self._client.register_script(_CONSUME)
        self._refund_script = self._client.register_script(_REFUND)

    async def hit(self, key_name: str, policy: RatePolicy, cost: int = 1) -> RateDecision:
        return await self._bucket(self._prefix + "rate:" + key_name, policy, cost)

    async def hit_failed_auth(self, address: str) -> RateDecision:
        return await self._bucket(self._prefix + "auth:" + address, self.auth_fail, 1)

    async def consume_quota(self, key_name: str, monthly: int, cost: int = 1) -> QuotaDecision:
        now = self._clock()
        key, reset_at = self._quota_key(key_name, now)
        ttl_s = math.ceil(reset_at - now) + QUOTA_GRACE_S

        async def consume() -> QuotaDecision:
            reply: Any = await self._consume_script(keys=[key], args=[cost, monthly, ttl_s])
            return QuotaDecision(bool(reply[0]), monthly, int(reply[1]), reset_at)

        return await self._guard.run(
            consume, lambda: QuotaDecision(True, monthly, cost, reset_at, recorded=False)
        )

    async def refund_quota(self, key_name: str, cost: int = 1) -> None:
        key, _ = self._quota_key(key_name)

        async def refund() -> None:
            await self._refund_script(keys=[key], args=[cost])

        await self._guard.run(refund, lambda: None, on_fail="ignore")

    async def quota_used(self, key_name: str) -> int:
        key, _ = self._quota_key(key_name)

        async def read() -> int:
            raw = await self._client.get(key)
            return int(raw) if raw is not None else 0

        return await self._guard.run(read, lambda: 0, on_fail="raise")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _bucket(self, key: str, policy: RatePolicy, cost: int) -> RateDecision:
        interval, tolerance = gcra.intervals(policy)

        async def take() -> RateDecision:
            reply: Any = await self._bucket_script(keys=[key], args=[interval, tolerance, cost])
            allowed, now_us, tat_us = (int(v) for v in reply)
            return gcra.describe(policy, cost, bool(allowed), now_us, tat_us)

        return await self._guard.run(take, lambda: gcra.admitted_unchecked(policy, cost))

    def _quota_key(self, key_name: str, now: float | None = None) -> tuple[str, float]:
        month, reset_at = gcra.month_of(self._clock() if now is None else now)
        return f"{self._prefix}quota:{key_name}:{month}", reset_at
