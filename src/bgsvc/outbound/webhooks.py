"""Webhook deliveries signed as Standard Webhooks sign them, retried with backoff.

Signing is in ``signing``; every delivery goes through the guarded outbound client and never
follows a redirect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from bgsvc.errors import UrlFetchFailed, UrlForbidden, UrlInvalid
from bgsvc.outbound.client import OutboundClient
from bgsvc.outbound.signing import WebhookSigner

if TYPE_CHECKING:
    from bgsvc.config import Settings

JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
BATCH_COMPLETED = "batch.completed"


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff with full jitter: the wait after attempt n (n = 1, 2, ...) is
    uniform in [0, min(max_s, base_s * 2**(n-1))], so receivers that failed together are
    not retried together."""

    attempts: int = 8
    base_s: float = 15.0
    max_s: float = 300.0

    def cap(self, attempt: int) -> float:
        """The longest wait after attempt ``attempt`` (1-based)."""
        return float(min(self.max_s, self.base_s * 2.0 ** min(attempt - 1, 64)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.cap(attempt))

    @property
    def longest_s(self) -> float:
        """The most time all the waits can add up to."""
        return sum(self.cap(n) for n in range(1, self.attempts))

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        return cls(
            attempts=settings.webhook_attempts,
            base_s=settings.webhook_backoff_base_s,
            max_s=settings.webhook_backoff_max_s,
        )


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST: when it started (Unix seconds), how long it took, and the status or the
    error code (``url_fetch_failed``, ``url_forbidden``...) with its message."""

    number: int
    started_at: float
    duration_s: float
    status: int | None = None
    error: str | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


Outcome = Literal["delivered", "gone", "refused", "exhausted"]


@dataclass(frozen=True)
class DeliveryResult:
    """How a delivery ended: ``delivered`` (2xx), ``gone`` (410: the receiver asks for no
    more), ``refused`` (the URL may not be reached; not retried) or ``exhausted``."""

    event_id: str
    outcome: Outcome
    attempts: tuple[DeliveryAttempt, ...]

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


class SigningUnavailable(Exception):
    """No secret to sign an attempt with right now (a signer lookup's answer): the attempt
    is recorded with ``code`` and ``message`` instead of being sent, and retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# What signs one delivery: a fixed signer, or a lookup asked again before each attempt, so
# that a retry after the secret is rotated is signed with the new one.
Signer = WebhookSigner | Callable[[], Awaitable[WebhookSigner]]


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def event_body(event_type: str, data: Mapping[str, object], created: datetime) -> bytes:
    """The JSON sent: ``type`` and ``data`` as the API promises, plus the spec's
    ``timestamp`` (when the event happened, which retries do not change)."""
    payload = {"type": event_type, "timestamp": created.isoformat(), "data": dict(data)}
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


# Attempts in flight at once per process, and per key: each holds a socket for up to the
# outbound total timeout, and a key whose receiver is slow on purpose (or whose jobs fail
# at once with a callback) must not take the process's file descriptors, nor every other
# key's deliveries with them. An attempt beyond a bound waits its turn, for at most
# SLOT_WAIT_S: past that it is a failed attempt, retried on the schedule, so a delivery
# still ends within the schedule and waiting deliveries cannot pile up without end.
MAX_IN_FLIGHT = 32
MAX_IN_FLIGHT_PER_KEY = 4
SLOT_WAIT_S = 30.0


class LaneBusy(Exception):
    """No place for the attempt within the wait: recorded as the attempt's error."""

    code = "webhook_busy"
    message = "Too many of this key's webhook attempts in flight; retried later."


class _Lanes:
    """The bounds on attempts in flight: one for the process, one per key (lanes are made
    when a key's first attempt waits and dropped with its last)."""

    def __init__(self, total: int, per_lane: int, wait_s: float) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_lane = per_lane
        self._wait_s = wait_s
        self._lanes: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, lane: str | None) -> AsyncIterator[None]:
        """A place in ``lane`` (None: no keys, the process's bound alone) and in the
        process, or LaneBusy once the wait is over."""
        own = None
        if lane is not None:
            own = self._lanes.setdefault(lane, (asyncio.Semaphore(self._per_lane), [0]))
            own[1][0] += 1
        taken: list[asyncio.Semaphore] = []
        try:
            try:
                async with asyncio.timeout(self._wait_s):
                    for semaphore in (own[0], self._total) if own else (self._total,):
                        await semaphore.acquire()
                        taken.append(semaphore)
            except TimeoutError:
                raise LaneBusy from None
            yield
        finally:
            for semaphore in taken:
                semaphore.release()
            if own is not None and lane is not None:
                own[1][0] -= 1
                if own[1][0] == 0:
                    del self._lanes[lane]


Failure = UrlFetchFailed | UrlForbidden | UrlInvalid | SigningUnavailable | LaneBusy


class WebhookSender:
    """Delivers events to callback URLs; every attempt is recorded and returned."""

    def __init__(
        self,
        client: OutboundClient,
        signer: WebhookSigner | None,
        schedule: RetrySchedule,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        in_flight: tuple[int, int] = (MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_KEY),
        slot_wait_s: float = SLOT_WAIT_S,
    ) -> None:
        self._client = client
        self._signer = signer
        self._schedule = schedule
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._lanes = _Lanes(*in_flight, slot_wait_s)

    @classmethod
    def from_settings(cls, settings: Settings, client: OutboundClient) -> WebhookSender:
        """A sender with BGSVC_WEBHOOK_*; ValueError when no secret is set, because an
        unsigned delivery could not be told from a forged one."""
        secret = settings.webhook_secret.get_secret_value()
        if not secret:
            raise ValueError("BGSVC_WEBHOOK_SECRET is empty: webhooks cannot be signed")
        return cls(client, WebhookSigner(secret), RetrySchedule.from_settings(settings))

    async def deliver(
        self,
        url: str,
        event_type: str,
        data: Mapping[str, object],
        *,
        event_id: str | None = None,
        on_attempt: Callable[[DeliveryAttempt], Awaitable[None]] | None = None,
        signer: Signer | None = None,
        key: str | None = None,
    ) -> DeliveryResult:
        """POST the event until a 2xx or a 410, or until the attempts run out.

        The id and body stay the same across retries (receivers deduplicate on
        ``webhook-id``); the timestamp and signature are made per attempt, as receivers
        refuse timestamps older than a few minutes. ``on_attempt`` sees each attempt as it
        ends, for callers that store progress. ``signer`` signs this delivery instead of
        the sender's own (each tenant's deliveries with its own secret); a lookup that
        raises SigningUnavailable makes that attempt a recorded failure, retried. ``key``
        (the API key's name) puts the attempts in that key's lane: at most
        MAX_IN_FLIGHT_PER_KEY in flight, and MAX_IN_FLIGHT in all."""
        sign = signer or self._signer
        if sign is None:
            raise ValueError("this sender has no secret of its own: give the delivery a signer")
        event_id = event_id or new_event_id()
        body = event_body(event_type, data, datetime.fromtimestamp(self._clock(), tz=UTC))
        attempts: list[DeliveryAttempt] = []
        for number in range(1, self._schedule.attempts + 1):
            status: int | None = None
            error: Failure | None = None
            wait_at_least = 0.0
            started_at = self._clock()
            began = time.monotonic()
            try:
                async with self._lanes.slot(key):
                    started_at = self._clock()
                    began = time.monotonic()
                    try:
                        current = sign if isinstance(sign, WebhookSigner) else await sign()
                        headers = {
                            "Content-Type": "application/json",
                            **current.headers(event_id, int(started_at), body),
                        }
                        response = await self._client.post(url, content=body, headers=headers)
                        status = response.status
                        wait_at_least = _retry_after(response.headers) or 0.0
                    except (UrlFetchFailed, UrlForbidden, UrlInvalid, SigningUnavailable) as exc:
                        error = exc
            except LaneBusy as exc:
                error = exc
            attempt = DeliveryAttempt(
                number=number,
                started_at=started_at,
                duration_s=time.monotonic() - began,
                status=status,
                error=error.code if error else None,
                message=error.message if error else None,
            )
            attempts.append(attempt)
            if on_attempt is not None:
                await on_attempt(attempt)
            outcome: Outcome | None = None
            if status is not None and 200 <= status < 300:
                outcome = "delivered"
            elif status == 410:
                outcome = "gone"
            elif isinstance(error, UrlForbidden | UrlInvalid):
                outcome = "refused"
            if outcome is not None:
                return DeliveryResult(event_id, outcome, tuple(attempts))
            if number < self._schedule.attempts:
                delay = self._schedule.delay(number, self._rng)
                # A receiver's Retry-After is honoured, within the schedule's longest wait.
                await self._sleep(max(delay, min(wait_at_least, self._schedule.max_s)))
        return DeliveryResult(event_id, "exhausted", tuple(attempts))
