"""Enforcement on every API route: authenticate, scope, rate limit, quota, then the route.

A pure ASGI middleware between the request context (ids, metrics) and admission, so a
refused request costs neither an admission slot nor the read of its upload.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import anyio.to_thread
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bgsvc.auth.addresses import Network, client_address, parse_networks
from bgsvc.auth.base import ApiKey, KeyStore
from bgsvc.auth.headers import rate_limit_headers
from bgsvc.auth.keys import digest_of, verify
from bgsvc.auth.labels import KeyLabels
from bgsvc.error_handlers import keeps_credits, reject
from bgsvc.errors import (
    AuthRequired,
    AuthUnavailable,
    BgsvcError,
    Forbidden,
    QuotaExceeded,
    RateLimited,
)
from bgsvc.limits.base import Limits, RateDecision
from bgsvc.metrics import Metrics

log = logging.getLogger(__name__)

# Keys remembered for a key-store outage (each a few hundred bytes).
KNOWN_KEYS_MAX = 10_000
STORE_DOWN_LOG_EVERY_S = 30.0
THROTTLE_LOG_EVERY_S = 30.0

# Open without a key: probes, metrics, the page and its files, the API's own description
# (and /models, which the page reads before anyone typed a key). Everything else needs one.
OPEN_PATHS = frozenset(
    {"/", "/health", "/ready", "/metrics", "/models", "/docs", "/redoc", "/openapi.json"}
)
OPEN_PREFIXES = ("/static/", "/docs/")
REMOVE_PATHS = frozenset({"/remove-background", "/api/remove", "/v1.0/removebg"})
JOBS_PREFIXES = ("/jobs", "/batches")
REMOVEBG_PATH = "/v1.0/removebg"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def scope_needed(path: str) -> str | None:
    """The scope a route needs; None: any valid key (e.g. /v1.0/account)."""
    if path in REMOVE_PATHS:
        return "remove"
    if any(path == p or path.startswith(p + "/") for p in JOBS_PREFIXES):
        return "jobs"
    return None


CHARGED_POSTS = REMOVE_PATHS | {"/jobs", "/batches"}


def credits_of(method: str, path: str, query: bytes, headers: Headers) -> int:
    """Credits a request costs before its body is read: one per image it asks for. A batch
    is charged its first image here and the rest once its items are counted
    (:meth:`AuthContext.charge`), before anything is queued. A job with an Idempotency-Key
    is charged by its route, once it knows the key names no job yet: a retry of a job
    already paid for costs nothing, even with the quota spent."""
    if method == "POST" and path == "/jobs" and "idempotency-key" in headers:
        return 0
    if method == "POST" and path in CHARGED_POSTS:
        return 1
    if method == "GET" and path == "/api/remove" and query:
        return 1  # rembg's URL input
    return 0


def credentials(headers: Headers) -> str | None:
    """The secret from X-Api-Key (remove.bg's clients) or Authorization: Bearer."""
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


@dataclass
class AuthContext:
    """What the route may read from ``scope["state"]["auth"]`` (e.g. /v1.0/account), and
    how it settles the request's credits. ``charged`` is what the answer's
    X-Credits-Charged says, and what a non-2xx answer gives back."""

    key: ApiKey
    charged: int = 0
    limits: Limits | None = None

    @property
    def metered(self) -> bool:
        """Whether this key's work counts against a quota (else nothing is charged)."""
        return self.key.quota is not None and self.limits is not None

    async def charge(self, total: int) -> None:
        """Bring the request's charge up to ``total`` credits, all or nothing: QuotaExceeded
        (402) when the month's quota cannot cover the rest."""
        more = total - self.charged
        if more <= 0 or not self.metered:
            return
        assert self.limits is not None and self.key.quota is not None
        quota = await self.limits.consume_quota(self.key.name, self.key.quota, more)
        if not quota.allowed:
            raise QuotaExceeded(
                f"{total} credits are needed and the monthly quota of {quota.limit} has "
                f"{max(0, quota.limit - quota.used + self.charged)} left for this API key."
            )
        if quota.recorded:
            self.charged = total

    async def refund(self) -> None:
        """Give back everything this request was charged (e.g. an idempotent replay)."""
        if self.charged and self.limits is not None:
            await self.limits.refund_quota(self.key.name, self.charged)
        self.charged = 0


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        store: KeyStore,
        pepper: str,
        trusted_proxies: str,
        metrics: Metrics,
        max_key_labels: int,
    ) -> None:
        self.app = app
        self.store = store
        self.pepper = pepper
        self.trusted: tuple[Network, ...] = parse_networks(trusted_proxies)
        self.metrics = metrics
        self.labels = KeyLabels(max_key_labels)
        # Keys the store last said are valid (or revoked), by digest, used only while the
        # store cannot answer: nothing can be revoked then either (revoking writes to that
        # store), so this admits no one the store would refuse, and known clients keep
        # being served through a Redis outage. An unknown secret still gets a 503.
        self._known: OrderedDict[str, ApiKey] = OrderedDict()
        self._store_down_logged = -STORE_DOWN_LOG_EVERY_S
        self._throttle_logged: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limits: Limits | None = getattr(scope["app"].state, "limits", None)
        try:
            key = await self._authenticate(scope, limits)
            decision, charged = await self._admit(scope, key, limits)
        except BgsvcError as exc:
            await self._reject(exc, scope, receive, send)
            return
        context = AuthContext(key, charged, limits)
        scope.setdefault("state", {})["auth"] = context
        status = 500
        reports_credits = path in CHARGED_POSTS and scope["method"] == "POST"

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if decision is not None:
                    removebg = path.startswith("/v1.0/")
                    headers.update(rate_limit_headers(decision, removebg=removebg))
                if reports_credits:
                    kept = status < 300 or keeps_credits(scope)
                    headers["X-Credits-Charged"] = str(context.charged if kept else 0)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            failed = not 200 <= status < 300 and not keeps_credits(scope)
            if context.charged and failed and limits is not None:
                # No result, no charge: the credits go back (unless the model ran for an
                # answer that is an error, BgsvcError.keeps_credits).
                await limits.refund_quota(key.name, context.charged)
            self.metrics.key_requests.labels(self.labels(key.name), str(status)).inc()

    async def _authenticate(self, scope: Scope, limits: Limits | None) -> ApiKey:
        secret = credentials(Headers(scope=scope))
        key = None
        if secret is not None:
            try:
                key = await anyio.to_thread.run_sync(verify, self.store, secret, self.pepper)
            except Exception as exc:  # any store failure: only known keys can be checked
                key = self._known.get(digest_of(secret, self.pepper))
                now = time.monotonic()
                if now - self._store_down_logged >= STORE_DOWN_LOG_EVERY_S:
                    self._store_down_logged = now
                    log.error("key store unavailable (%s): known keys only", type(exc).__name__)
                if key is None:
                    raise AuthUnavailable("API keys cannot be checked right now.") from None
            else:
                if key is not None:
                    self._known[key.digest] = key
                    self._known.move_to_end(key.digest)
                    if len(self._known) > KNOWN_KEYS_MAX:
                        self._known.popitem(last=False)
        if key is not None:
            return key
        reason = "missing" if secret is None else "unknown"
        self.metrics.auth_failures.labels(reason).inc()
        if limits is not None:
            peer = (scope.get("client") or ("-", 0))[0]
            forwarded = Headers(scope=scope).get("x-forwarded-for")
            address = client_address(peer, forwarded, self.trusted)
            throttle = await limits.hit_failed_auth(address)
            if not throttle.allowed:
                self.metrics.auth_failures.labels("throttled").inc()
                # Once per address per 30 s: a throttled client must not be able to write a
                # warning per request (the metric counts every one).
                now = time.monotonic()
                if (
                    now - self._throttle_logged.get(address, -THROTTLE_LOG_EVERY_S)
                    >= THROTTLE_LOG_EVERY_S
                ):
                    if len(self._throttle_logged) >= KNOWN_KEYS_MAX:
                        self._throttle_logged.clear()
                    self._throttle_logged[address] = now
                    log.warning("failed authentications from %s: throttled", address)
                raise RateLimited(
                    "Too many failed authentications; try again later.",
                    retry_after=max(1, throttle.retry_after_s),
                )
        if secret is None:
            raise AuthRequired("An API key is required: send X-Api-Key or Authorization: Bearer.")
        raise AuthRequired("The API key is not valid.")

    async def _admit(
        self, scope: Scope, key: ApiKey, limits: Limits | None
    ) -> tuple[RateDecision | None, int]:
        label = self.labels(key.name)
        needed = scope_needed(scope["path"])
        if key.revoked:
            self.metrics.key_rejections.labels(label, "revoked").inc()
            raise Forbidden("This API key has been revoked.")
        if needed is not None and needed not in key.scopes:
            self.metrics.key_rejections.labels(label, "scope").inc()
            raise Forbidden(f"This API key lacks the {needed!r} scope.")
        if limits is None:
            return None, 0
        decision = None
        policy = key.policy
        if policy is not None:
            decision = await limits.hit(key.name, policy)
            if not decision.allowed:
                self.metrics.key_rejections.labels(label, "rate_limited").inc()
                removebg = scope["path"].startswith("/v1.0/")
                raise RateLimited(
                    "Rate limit exceeded for this API key.",
                    retry_after=max(1, decision.retry_after_s),
                    headers=rate_limit_headers(decision, removebg=removebg),
                )
        cost = credits_of(
            scope["method"], scope["path"], scope.get("query_string", b""), Headers(scope=scope)
        )
        if cost and key.quota is not None:
            quota = await limits.consume_quota(key.name, key.quota, cost)
            if not quota.allowed:
                self.metrics.key_rejections.labels(label, "quota_exceeded").inc()
                raise QuotaExceeded(
                    f"The monthly quota of {quota.limit} credits is used up for this API key."
                )
            return decision, cost if quota.recorded else 0
        return decision, 0

    async def _reject(self, exc: BgsvcError, scope: Scope, receive: Receive, send: Send) -> None:
        charged = scope["path"] in CHARGED_POSTS and scope["method"] == "POST"
        nothing_charged = {"X-Credits-Charged": "0"} if charged else None
        await reject(exc, scope, self.metrics, nothing_charged)(scope, receive, send)
