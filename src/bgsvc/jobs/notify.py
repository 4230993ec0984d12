"""Callback URLs: checked by the outbound policy at submission, called on completion."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio.to_thread

from bgsvc.auth.base import KeyStore
from bgsvc.auth.keys import webhook_secret_of
from bgsvc.errors import UrlFetchFailed
from bgsvc.jobs.base import JobStore
from bgsvc.jobs.model import JobRecord, JobStatus
from bgsvc.outbound.client import OutboundClient, system_resolver
from bgsvc.outbound.policy import AllowList, OutboundPolicy, parse_ip_literal
from bgsvc.outbound.signing import WebhookSigner
from bgsvc.outbound.target import parse_target
from bgsvc.outbound.webhooks import (
    JOB_FAILED,
    JOB_SUCCEEDED,
    DeliveryAttempt,
    DeliveryResult,
    RetrySchedule,
    SigningUnavailable,
    WebhookSender,
)

if TYPE_CHECKING:
    from bgsvc.config import Settings
    from bgsvc.metrics import Metrics

log = logging.getLogger(__name__)


async def check_callback_url(url: str, settings: Settings) -> None:
    """Refuse (UrlInvalid, UrlForbidden, UrlFetchFailed) a callback the deliveries could
    never reach, so the client hears it now rather than never. Each delivery checks the
    address again: DNS may change in between."""
    target = parse_target(url)
    policy = OutboundPolicy(AllowList.parse(settings.outbound_allow))
    if target.literal is not None:
        addresses = [target.literal]
    else:
        try:
            found = await system_resolver(target.host, target.port)
        except OSError as exc:
            raise UrlFetchFailed(f"{target.host} could not be resolved.") from exc
        addresses = [ip for ip in map(parse_ip_literal, found) if ip is not None]
        if not addresses:
            raise UrlFetchFailed(f"{target.host} has no address.")
    for ip in addresses:
        policy.check(target.host, ip, target.port, literal=target.literal is not None)


# How long a tenant's secret is reused before the key store is asked again: a burst of
# deliveries costs one lookup, and a rotation signs everything from this long after it.
SECRET_TTL_S = 5.0


@dataclass(frozen=True)
class _Looked:
    expires_at: float
    signer: WebhookSigner | None
    salt: str | None = None
    # Why there is no signer (the attempt's message), when there is none.
    missing: str | None = None


class TenantSigners:
    """Who signs a tenant's deliveries: the API key's own secret (derived from its salt
    and the pepper, never stored), else the global BGSVC_WEBHOOK_SECRET, which signs only
    for work submitted without a key and for keys made before keys had their own secret,
    until one is given to them (`bgsvc keys webhook-secret`): their receivers were set
    up with the global secret and keep verifying.

    The key store is synchronous, so it is asked from a worker thread, once per tenant
    per ``ttl_s``. When it does not answer, the last secret seen for the tenant is used
    (a key's secret changes only by rotation, which writes to that same store)."""

    def __init__(
        self,
        store: KeyStore,
        pepper: str,
        fallback: WebhookSigner | None,
        *,
        ttl_s: float = SECRET_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._pepper = pepper
        self._fallback = fallback
        self._ttl_s = ttl_s
        self._clock = clock
        self._seen: dict[str, _Looked] = {}
        # One lookup at a time per tenant: the deliveries of a burst wait for the first.
        self._locks: dict[str, asyncio.Lock] = {}

    async def signer(self, tenant: str | None) -> WebhookSigner:
        """The tenant's signer; SigningUnavailable when there is none (yet)."""
        if tenant is None:
            if self._fallback is None:
                raise SigningUnavailable(
                    "webhooks_disabled",
                    "Submitted without an API key, and BGSVC_WEBHOOK_SECRET is not set.",
                )
            return self._fallback
        looked = self._seen.get(tenant)
        if looked is None or self._clock() >= looked.expires_at:
            async with self._locks.setdefault(tenant, asyncio.Lock()):
                looked = self._seen.get(tenant)
                if looked is None or self._clock() >= looked.expires_at:
                    looked = await self._look_up(tenant, looked)
        if looked.signer is None:
            raise SigningUnavailable("webhooks_disabled", looked.missing or "No secret.")
        return looked.signer

    async def _look_up(self, tenant: str, stale: _Looked | None) -> _Looked:
        try:
            key = await anyio.to_thread.run_sync(self._store.by_name, tenant)
        except Exception as exc:  # any store failure: the last answer, if there is one
            if stale is not None and stale.signer is not None:
                log.warning(
                    "key store unavailable (%s): the last webhook secret of %r signs",
                    type(exc).__name__,
                    tenant,
                )
                # Kept for another ttl: a burst must not wait on a dead store each time.
                looked = replace(stale, expires_at=self._clock() + self._ttl_s)
                self._seen[tenant] = looked
                return looked
            raise SigningUnavailable(
                "auth_unavailable", "The key store did not answer; the delivery is retried."
            ) from None
        expires_at = self._clock() + self._ttl_s
        if key is None:
            looked = _Looked(expires_at, None, missing=f"No API key is named {tenant!r}.")
        elif key.webhook_salt is not None:
            salt = key.webhook_salt
            if stale is not None and stale.salt == salt and stale.signer is not None:
                signer = stale.signer
            else:
                signer = WebhookSigner(webhook_secret_of(salt, self._pepper))
            looked = _Looked(expires_at, signer, salt)
        elif self._fallback is not None:
            looked = _Looked(expires_at, self._fallback)
        else:
            looked = _Looked(
                expires_at,
                None,
                missing=f"The API key {tenant!r} has no webhook secret yet: "
                f"`bgsvc keys webhook-secret {tenant}` gives it one.",
            )
        self._seen[tenant] = looked
        return looked

    async def can_sign(self, tenant: str | None) -> bool:
        """Whether the tenant's deliveries can be signed now; True when the store does not
        answer (each attempt asks again)."""
        try:
            await self.signer(tenant)
        except SigningUnavailable as exc:
            return exc.code == "auth_unavailable"
        return True


class Notifier:
    """Sends ``job.succeeded`` / ``job.failed`` and records every attempt in the job."""

    def __init__(
        self,
        sender: WebhookSender,
        client: OutboundClient,
        metrics: Metrics | None = None,
        *,
        signers: TenantSigners | None = None,
    ) -> None:
        self.sender = sender
        self.client = client
        self.metrics = metrics
        self.signers = signers

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        key_store: KeyStore | None = None,
    ) -> Notifier | None:
        """With keys required (and their store given) each key's deliveries are signed
        with its own secret, so there is a notifier even without BGSVC_WEBHOOK_SECRET.
        Otherwise that secret signs everything, and without it this is None (submissions
        with a callback are refused then)."""
        secret = settings.webhook_secret.get_secret_value()
        fallback = WebhookSigner(secret) if secret else None
        signers = None
        if settings.auth == "required" and key_store is not None:
            pepper = settings.auth_pepper.get_secret_value()
            signers = TenantSigners(key_store, pepper, fallback)
        if fallback is None and signers is None:
            return None
        client = OutboundClient.from_settings(settings)
        sender = WebhookSender(client, fallback, RetrySchedule.from_settings(settings))
        return cls(sender, client, metrics, signers=signers)

    async def can_sign(self, tenant: str | None) -> bool:
        """Whether a delivery for ``tenant`` (an API key's name; None without auth) could be
        signed now: a submission may refuse its callback_url when not."""
        if self.signers is None:
            return True
        return await self.signers.can_sign(tenant)

    async def deliver(
        self,
        url: str,
        event: str,
        data: Mapping[str, object],
        *,
        event_id: str,
        on_attempt: Callable[[DeliveryAttempt], Awaitable[None]],
        tenant: str | None = None,
    ) -> DeliveryResult:
        """``sender.deliver``, signed with ``tenant``'s secret (the name of the API key
        that submitted the work; None without auth), counted in the metrics: each attempt
        as it ends (a receiver failing for hours shows at once) and the outcome."""

        async def attempted(attempt: DeliveryAttempt) -> None:
            if self.metrics is not None:
                result = attempt.error or f"{(attempt.status or 0) // 100}xx"
                self.metrics.webhook_attempts.labels(event, result).inc()
            await on_attempt(attempt)

        signers = self.signers

        async def sign() -> WebhookSigner:
            assert signers is not None
            return await signers.signer(tenant)

        result = await self.sender.deliver(
            url,
            event,
            data,
            event_id=event_id,
            on_attempt=attempted,
            signer=None if signers is None else sign,
            key=tenant,
        )
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(event, result.outcome).inc()
        if not result.delivered:
            log.warning("webhook %s ended %s", event_id, result.outcome)
        return result

    async def notify(self, record: JobRecord, jobs: JobStore) -> None:
        if record.callback_url is None:
            return
        event = JOB_SUCCEEDED if record.status is JobStatus.SUCCEEDED else JOB_FAILED
        data = record.public()
        data.pop("webhook_attempts", None)
        data.pop("callback_url", None)

        async def store(attempt: DeliveryAttempt) -> None:
            await jobs.add_webhook_attempt(record.id, attempt.as_dict())

        await self.deliver(
            record.callback_url,
            event,
            data,
            event_id=f"msg_{record.id}",
            on_attempt=store,
            tenant=record.tenant,
        )

    async def aclose(self) -> None:
        await self.client.aclose()
