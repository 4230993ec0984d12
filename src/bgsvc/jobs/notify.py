"""Callback URLs: checked by the outbound policy at submission, called on completion."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from bgsvc.errors import UrlFetchFailed
from bgsvc.jobs.model import JobRecord, JobStatus
from bgsvc.jobs.store import JobStore
from bgsvc.outbound.client import OutboundClient, system_resolver
from bgsvc.outbound.policy import AllowList, OutboundPolicy, parse_ip_literal
from bgsvc.outbound.target import parse_target
from bgsvc.outbound.webhooks import (
    JOB_FAILED,
    JOB_SUCCEEDED,
    DeliveryAttempt,
    DeliveryResult,
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


class Notifier:
    """Sends ``job.succeeded`` / ``job.failed`` and records every attempt in the job."""

    def __init__(
        self, sender: WebhookSender, client: OutboundClient, metrics: Metrics | None = None
    ) -> None:
        self.sender = sender
        self.client = client
        self.metrics = metrics

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Notifier | None:
        """None when no secret is set (submissions with a callback are refused then)."""
        if not settings.webhook_secret.get_secret_value():
            return None
        client = OutboundClient.from_settings(settings)
        return cls(WebhookSender.from_settings(settings, client), client, metrics)

    async def deliver(
        self,
        url: str,
        event: str,
        data: Mapping[str, object],
        *,
        event_id: str,
        on_attempt: Callable[[DeliveryAttempt], Awaitable[None]],
    ) -> DeliveryResult:
        """``sender.deliver``, counted in the metrics: each attempt as it ends (a receiver
        failing for hours shows at once) and the delivery's outcome."""

        async def attempted(attempt: DeliveryAttempt) -> None:
            if self.metrics is not None:
                result = attempt.error or f"{(attempt.status or 0) // 100}xx"
                self.metrics.webhook_attempts.labels(event, result).inc()
            await on_attempt(attempt)

        result = await self.sender.deliver(
            url, event, data, event_id=event_id, on_attempt=attempted
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
            record.callback_url, event, data, event_id=f"msg_{record.id}", on_attempt=store
        )

    async def aclose(self) -> None:
        await self.client.aclose()
