"""What the rest of the service asks of rate limits and quotas (bgsvc.auth calls it).

Implementations: SQLite (one node, shared by its workers) and Redis (shared by every node,
atomic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "day": 86400.0,
}


@dataclass(frozen=True)
class RatePolicy:
    """``limit`` requests per ``window_s`` seconds, refilled evenly (a token bucket), with
    up to ``burst`` at once (burst defaults to ``limit``)."""

    limit: int
    window_s: float
    burst: int

    @classmethod
    def parse(cls, text: str, burst: int | None = None) -> RatePolicy:
        """ "60/min", "10/s", "1000/hour", "5000/day"."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", text.lower())
        if match is None or match.group(2) not in _UNITS or int(match.group(1)) < 1:
            raise ValueError(f"rate {text!r}: expected N/s, N/min, N/hour or N/day")
        limit = int(match.group(1))
        return cls(limit, _UNITS[match.group(2)], limit if burst is None else burst)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int  # the policy's limit (requests per window)
    remaining: int  # requests left now (whole tokens)
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: int  # when refused: whole seconds until one request is allowed; else 0
    window_s: float


@dataclass(frozen=True)
class QuotaDecision:
    allowed: bool
    limit: int  # per calendar month (UTC)
    used: int  # after this call
    reset_at: float  # Unix time of the next month's start (UTC)
    # False when the store could not be reached and fail-open admitted the request: nothing
    # was counted, so nothing is reported as charged or given back later.
    recorded: bool = True


class Limits(Protocol):
    async def hit(self, key_name: str, policy: RatePolicy, cost: int = 1) -> RateDecision:
        """Take ``cost`` tokens from ``key_name``'s bucket (refused: nothing taken)."""
        ...

    async def consume_quota(self, key_name: str, monthly: int, cost: int = 1) -> QuotaDecision:
        """Count ``cost`` against this month's quota (refused when it would exceed it)."""
        ...

    async def refund_quota(self, key_name: str, cost: int = 1) -> None:
        """Give back what a request that failed (no result) was charged."""
        ...

    async def quota_used(self, key_name: str) -> int:
        """This month's usage."""
        ...

    async def hit_failed_auth(self, address: str) -> RateDecision:
        """Count a failed authentication from ``address``; refused beyond the setting."""
        ...

    async def aclose(self) -> None: ...
