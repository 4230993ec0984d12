"""What a limiter does when its store fails: admit (fail-open) or refuse (fail-closed).

After an error the store is skipped for a moment, as the Redis cache level does: one probe
per second finds it back quickly, while a blackholed Redis costs one socket timeout per
second rather than one per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from bgsvc.errors import LimitsUnavailable

log = logging.getLogger("bgsvc.limits")

T = TypeVar("T")

RETRY_AFTER_ERROR_S = 1.0
# One warning per this many seconds while the store keeps failing, however many requests.
LOG_EVERY_S = 30.0

# "policy": as BGSVC_RATE_LIMIT_FAIL_OPEN says (checks that admit a request);
# "ignore": the fallback in either mode (refunds: the request has failed already);
# "raise": LimitsUnavailable in either mode (reads, which have no harmless default).
OnFail = Literal["policy", "ignore", "raise"]


class Guard:
    def __init__(
        self,
        *,
        store: str,
        errors: tuple[type[BaseException], ...],
        fail_open: bool,
        on_error: Callable[[str], None] = lambda action: None,
        retry_after_s: float = RETRY_AFTER_ERROR_S,
    ) -> None:
        self.store = store
        self.fail_open = fail_open
        self._errors = errors
        self._on_error = on_error
        self._retry_after_s = retry_after_s
        self._skip_until = 0.0
        self._down = False
        self._last_log = -LOG_EVERY_S
        self._unlogged = 0

    async def run(
        self, op: Callable[[], Awaitable[T]], fallback: Callable[[], T], on_fail: OnFail = "policy"
    ) -> T:
        """``op()``; when the store fails (or is being skipped), ``fallback()`` or
        :class:`LimitsUnavailable`, as ``on_fail`` and the fail-open setting say."""
        if time.monotonic() < self._skip_until:
            return self._unavailable(None, fallback, on_fail)
        try:
            result = await op()
        except self._errors as exc:
            self._skip_until = time.monotonic() + self._retry_after_s
            self._down = True
            return self._unavailable(exc, fallback, on_fail)
        if self._down:
            self._down = False
            log.info("limits store (%s) reachable again", self.store)
        return result

    def _unavailable(
        self, exc: BaseException | None, fallback: Callable[[], T], on_fail: OnFail
    ) -> T:
        admit = on_fail == "ignore" or (on_fail == "policy" and self.fail_open)
        self._on_error("admitted" if admit else "refused")
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
            cause = f"{type(exc).__name__}: {exc}" if exc else "skipped after a recent error"
            log.warning(
                "limits store (%s) unavailable, requests %s: %s%s",
                self.store,
                "admitted unchecked" if self.fail_open else "refused",
                cause,
                more,
            )
            self._last_log = now
            self._unlogged = 0
        else:
            self._unlogged += 1
        if admit:
            return fallback()
        raise LimitsUnavailable(f"rate limits and quotas cannot be checked ({self.store} down)")
