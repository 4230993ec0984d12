"""The rate-limit response headers, in one place."""

from __future__ import annotations

import math
import time

from bgsvc.limits.base import RateDecision

POLICY_NAME = "default"


def rate_limit_headers(
    decision: RateDecision, *, removebg: bool = False, now: float | None = None
) -> dict[str, str]:
    """IETF draft-ietf-httpapi-ratelimit-headers (structured fields: quota ``q`` per window
    ``w``; remaining ``r``, seconds ``t`` until it is full again), and on remove.bg's route
    also the X-RateLimit-* trio its clients read (Reset in Unix seconds)."""
    reset_s = max(0, math.ceil(decision.reset_s))
    headers = {
        "RateLimit-Policy": f'"{POLICY_NAME}";q={decision.limit};w={math.ceil(decision.window_s)}',
        "RateLimit": f'"{POLICY_NAME}";r={max(0, decision.remaining)};t={reset_s}',
    }
    if removebg:
        now = time.time() if now is None else now
        headers["X-RateLimit-Limit"] = str(decision.limit)
        headers["X-RateLimit-Remaining"] = str(max(0, decision.remaining))
        headers["X-RateLimit-Reset"] = str(math.ceil(now + reset_s))
    return headers
