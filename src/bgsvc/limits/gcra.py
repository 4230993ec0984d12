"""The token bucket as GCRA, shared by both stores, and the calendar month of quotas.

GCRA (the generic cell rate algorithm) is a token bucket kept as one number: the
theoretical arrival time (TAT) at which the bucket would be full again. A hit of ``cost``
moves the TAT on by ``cost`` emission intervals and is allowed while the TAT stays within
the burst tolerance of now. One number read, compared and written is what makes the
bucket atomic in one small Redis script (or one SQLite transaction); a bucket of tokens
plus a last-refill time would need two fields and the same arithmetic. A stored TAT
also does not depend on the policy, so a key whose rate changes keeps its state.

Times are whole microseconds: Redis scripts compute in doubles, exact for integers far
beyond today's Unix time in microseconds, so both stores agree to the microsecond.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from bgsvc.limits.base import RateDecision, RatePolicy

US = 1_000_000


def intervals(policy: RatePolicy) -> tuple[int, int]:
    """(emission interval, burst tolerance) in microseconds."""
    interval = max(1, round(policy.window_s * US / policy.limit))
    return interval, interval * max(1, policy.burst)


def step(policy: RatePolicy, cost: int, now_us: int, stored_tat_us: int | None) -> tuple[bool, int]:
    """(allowed, the TAT after this hit): unchanged (but not before now) when refused."""
    interval, tolerance = intervals(policy)
    tat = max(stored_tat_us or now_us, now_us)
    new_tat = tat + interval * cost
    if new_tat - tolerance > now_us:
        return False, tat
    return True, new_tat


def describe(
    policy: RatePolicy, cost: int, allowed: bool, now_us: int, tat_us: int
) -> RateDecision:
    """The decision's numbers from the TAT the store kept (after the hit when allowed)."""
    interval, tolerance = intervals(policy)
    ahead = max(0, tat_us - now_us)
    remaining = max(0, (tolerance - ahead) // interval)
    retry_after = 0
    if not allowed:
        wait_us = ahead + interval * cost - tolerance
        retry_after = max(1, math.ceil(wait_us / US))
    return RateDecision(
        allowed=allowed,
        limit=policy.limit,
        remaining=int(remaining),
        reset_s=ahead / US,
        retry_after_s=retry_after,
        window_s=policy.window_s,
    )


def admitted_unchecked(policy: RatePolicy, cost: int) -> RateDecision:
    """What fail-open answers: allowed, as though the bucket were full (the store is not
    there to say otherwise)."""
    return RateDecision(True, policy.limit, max(0, policy.burst - cost), 0.0, 0, policy.window_s)


def month_of(unix_s: float) -> tuple[str, float]:
    """("YYYY-MM", Unix time of the next month's start), both UTC."""
    now = datetime.fromtimestamp(unix_s, UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return f"{now.year:04d}-{now.month:02d}", datetime(year, month, 1, tzinfo=UTC).timestamp()
