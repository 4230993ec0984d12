"""Webhook deliveries in the metrics: each delivery's outcome and each attempt, by event."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bgsvc.config import Settings
from bgsvc.jobs.notify import Notifier
from bgsvc.metrics import Metrics
from bgsvc.outbound.signing import generate_secret
from bgsvc.outbound.webhooks import DeliveryAttempt, DeliveryResult
from tests.jobs.conftest import submit, wait_status
from tests.outbound.servers import Handler, serve

Samples = dict[tuple[str, str, str], float]


def webhook_samples(text: str) -> Samples:
    """``(metric, event, outcome or result) -> value`` from an exposition."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("bgsvc_webhook_deliveries_total", "bgsvc_webhook_attempts_total"):
                kind = s.labels.get("outcome") or s.labels["result"]
                out[(s.name, s.labels["event"], kind)] = s.value
    return out


def wait_samples(client: TestClient, want: Samples, timeout: float = 10.0) -> Samples:
    """Until /metrics shows at least ``want`` (the counter moves after the attempt is
    stored, so the job's status can show the attempt a moment before)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = webhook_samples(client.get("/metrics").text)
        if all(seen.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.02)


def test_delivered_and_gone_webhooks_are_counted_by_event_and_outcome(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    answers = itertools.chain([200], itertools.repeat(410))

    def hook(handler: Handler) -> None:
        handler.reply(next(answers))

    with serve({"/hook": hook}) as receiver:
        client = jobs_client(webhook_secret=generate_secret(), outbound_allow="127.0.0.1")
        callback = {"callback_url": f"{receiver.base_url}/hook"}
        job = submit(client, photo_png, data=callback)
        wait_status(client, job["id"], ("succeeded",))
        delivered = {
            ("bgsvc_webhook_deliveries_total", "job.succeeded", "delivered"): 1.0,
            ("bgsvc_webhook_attempts_total", "job.succeeded", "2xx"): 1.0,
        }
        assert wait_samples(client, delivered) == delivered

        files = [("file", ("a.png", photo_png, "image/png"))]
        response = client.post("/batches", files=files, data=callback)
        assert response.status_code == 202, response.text
        gone = {
            ("bgsvc_webhook_deliveries_total", "batch.completed", "gone"): 1.0,
            ("bgsvc_webhook_attempts_total", "batch.completed", "4xx"): 1.0,
        }
        # A 410 ends the delivery: one attempt, no retry.
        assert wait_samples(client, {**delivered, **gone}) == {**delivered, **gone}
    assert len(receiver.seen) == 2


def _deliver(notifier: Notifier, url: str, attempts: list[DeliveryAttempt]) -> DeliveryResult:
    async def record(attempt: DeliveryAttempt) -> None:
        attempts.append(attempt)

    async def run() -> DeliveryResult:
        try:
            return await notifier.deliver(
                url, "job.failed", {"id": "job_x"}, event_id="msg_job_x", on_attempt=record
            )
        finally:
            await notifier.aclose()

    return asyncio.run(run())


def test_every_retry_counts_as_an_attempt_and_the_delivery_once_as_exhausted(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        webhook_secret=generate_secret(),
        outbound_allow="127.0.0.1",
        webhook_attempts=3,
        webhook_backoff_base_s=0,
        webhook_backoff_max_s=0,
    )
    metrics = Metrics()
    notifier = Notifier.from_settings(settings, metrics)
    assert notifier is not None
    attempts: list[DeliveryAttempt] = []
    with serve({"/hook": lambda h: h.reply(503)}) as receiver:
        result = _deliver(notifier, f"{receiver.base_url}/hook", attempts)
    assert result.outcome == "exhausted"
    # The caller's own on_attempt still sees every attempt.
    assert [a.status for a in attempts] == [503, 503, 503]
    body, _ = metrics.render()
    assert webhook_samples(body.decode()) == {
        ("bgsvc_webhook_deliveries_total", "job.failed", "exhausted"): 1.0,
        ("bgsvc_webhook_attempts_total", "job.failed", "5xx"): 3.0,
    }


def test_a_refused_callback_counts_its_error_code_as_the_attempt_result(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(webhook_secret=generate_secret(), outbound_allow="127.0.0.1")
    metrics = Metrics()
    notifier = Notifier.from_settings(settings, metrics)
    assert notifier is not None
    # A private address outside the allow-list: refused before any connection is made.
    result = _deliver(notifier, "http://10.0.0.1/hook", [])
    assert result.outcome == "refused"
    body, _ = metrics.render()
    assert webhook_samples(body.decode()) == {
        ("bgsvc_webhook_deliveries_total", "job.failed", "refused"): 1.0,
        ("bgsvc_webhook_attempts_total", "job.failed", "url_forbidden"): 1.0,
    }
