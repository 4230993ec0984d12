"""Each API key's jobs and batches are signed with that key's own webhook secret: a
receiver verifies them with it, and with no other key's secret nor the global one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from bgsvc.auth.base import ApiKey, KeyStore
from bgsvc.auth.keys import (
    digest_of,
    new_secret,
    new_webhook_salt,
    rotate_webhook_secret,
    webhook_secret_of,
)
from bgsvc.auth.redis import RedisKeyStore
from bgsvc.auth.sqlite import SqliteKeyStore
from bgsvc.config import Settings
from bgsvc.jobs.base import JobStore
from bgsvc.jobs.model import JobRecord, JobStatus
from bgsvc.jobs.notify import Notifier, TenantSigners
from bgsvc.outbound.client import OutboundClient
from bgsvc.outbound.signing import WebhookSigner, generate_secret
from bgsvc.outbound.webhooks import (
    BATCH_COMPLETED,
    DeliveryAttempt,
    DeliveryResult,
    RetrySchedule,
    WebhookSender,
)
from tests.jobs.conftest import submit
from tests.outbound.servers import Seen, Server, serve

PEPPER = "tenant-test-pepper-0123456789"
GLOBAL = generate_secret()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A key store that counts lookups by name and can be made to fail."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.lookups = 0
        self.down = False

    def by_name(self, name: str) -> ApiKey | None:
        self.lookups += 1
        if self.down:
            raise ConnectionError("the key store is down")
        return self.store.by_name(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@dataclass
class FakeJobs:
    """The one JobStore method a notification uses."""

    attempts: list[dict[str, Any]] = field(default_factory=list)

    async def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None:
        self.attempts.append(attempt)


@dataclass
class Tenants:
    store: CountingStore
    clock: Clock
    settings: Settings
    secrets: dict[str, str]

    def notifier(
        self,
        fallback: str | None = GLOBAL,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        attempts: int = 1,
    ) -> Notifier:
        signer = None if fallback is None else WebhookSigner(fallback)
        client = OutboundClient.from_settings(self.settings)
        schedule = RetrySchedule(attempts=attempts, base_s=0.0, max_s=0.0)
        sender = WebhookSender(client, signer, schedule, sleep=sleep or _no_wait)
        signers = TenantSigners(
            cast(KeyStore, self.store), PEPPER, signer, ttl_s=5.0, clock=self.clock
        )
        return Notifier(sender, client, signers=signers)


async def _no_wait(_: float) -> None:
    return None


async def _ignore(_: DeliveryAttempt) -> None:
    return None


@pytest.fixture
def tenants(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Tenants]:
    """Keys a and b with their own secrets, and legacy, made before keys had one."""
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    secrets: dict[str, str] = {}
    for name in ("a", "b"):
        salt = new_webhook_salt()
        store.add(ApiKey(name=name, digest=digest_of(new_secret(), PEPPER), webhook_salt=salt))
        secrets[name] = webhook_secret_of(salt, PEPPER)
    store.add(ApiKey(name="legacy", digest=digest_of(new_secret(), PEPPER)))
    settings = make_settings(outbound_allow="127.0.0.1")
    yield Tenants(CountingStore(store), Clock(), settings, secrets)
    store.close()


def _record(tenant: str | None, url: str) -> JobRecord:
    return JobRecord(
        id="job_1",
        status=JobStatus.SUCCEEDED,
        created_at=1.0,
        options={},
        input_key="in",
        fingerprint="f",
        callback_url=url,
        tenant=tenant,
    )


def _deliveries(
    notifier: Notifier,
    tenants: list[str | None],
    *,
    at_once: bool = False,
    attempts: list[DeliveryAttempt] | None = None,
) -> tuple[Server, list[DeliveryResult]]:
    """Batch deliveries, one per tenant (in turn, or all at once), to a receiver that
    answers 204; the receiver and the results."""
    seen_attempts = attempts if attempts is not None else []

    async def record(attempt: DeliveryAttempt) -> None:
        seen_attempts.append(attempt)

    async def run(url: str) -> list[DeliveryResult]:
        def one(t: str | None) -> Awaitable[DeliveryResult]:
            return notifier.deliver(
                url,
                BATCH_COMPLETED,
                {"id": "b"},
                event_id="msg_b",
                on_attempt=record,
                tenant=t,
            )

        try:
            if at_once:
                return list(await asyncio.gather(*(one(t) for t in tenants)))
            return [await one(t) for t in tenants]
        finally:
            await notifier.aclose()

    with serve({"/hook": lambda h: h.reply(204)}) as receiver:
        results = asyncio.run(run(f"{receiver.base_url}/hook"))
    return receiver, results


def _verifies(secret: str, seen: Seen) -> bool:
    try:
        Webhook(secret).verify(seen.body, seen.headers)
    except WebhookVerificationError:
        return False
    return True


def test_a_keys_job_verifies_with_its_secret_and_not_another_keys_or_the_global_one(
    tenants: Tenants,
) -> None:
    notifier = tenants.notifier()
    jobs = FakeJobs()

    async def run(url: str) -> None:
        try:
            await notifier.notify(_record("a", url), cast(JobStore, jobs))
        finally:
            await notifier.aclose()

    with serve({"/hook": lambda h: h.reply(204)}) as receiver:
        asyncio.run(run(f"{receiver.base_url}/hook"))
    [seen] = receiver.seen
    assert seen.headers["webhook-id"] == "msg_job_1"
    assert [a["status"] for a in jobs.attempts] == [204]
    assert _verifies(tenants.secrets["a"], seen)
    assert not _verifies(tenants.secrets["b"], seen)
    assert not _verifies(GLOBAL, seen)


def test_a_keys_batch_verifies_with_its_secret_only(tenants: Tenants) -> None:
    receiver, results = _deliveries(tenants.notifier(), ["b"])
    assert [r.outcome for r in results] == ["delivered"]
    assert _verifies(tenants.secrets["b"], receiver.seen[0])
    assert not _verifies(tenants.secrets["a"], receiver.seen[0])
    assert not _verifies(GLOBAL, receiver.seen[0])


def test_work_submitted_without_a_key_and_keys_without_a_secret_sign_with_the_global_one(
    tenants: Tenants,
) -> None:
    receiver, results = _deliveries(tenants.notifier(), [None, "legacy"])
    assert [r.outcome for r in results] == ["delivered", "delivered"]
    assert all(_verifies(GLOBAL, seen) for seen in receiver.seen)
    # Once the legacy key is given a secret of its own, it signs with that one.
    own = rotate_webhook_secret(tenants.store.store, "legacy", PEPPER)
    receiver, _ = _deliveries(tenants.notifier(), ["legacy"])
    assert _verifies(own, receiver.seen[0]) and not _verifies(GLOBAL, receiver.seen[0])


def test_a_burst_asks_the_store_once_and_a_rotation_signs_once_the_cached_secret_expires(
    tenants: Tenants,
) -> None:
    notifier = tenants.notifier()

    async def deliver(url: str) -> DeliveryResult:
        return await notifier.deliver(
            url, BATCH_COMPLETED, {"id": "b"}, event_id="msg_b", on_attempt=_ignore, tenant="a"
        )

    async def scenario(url: str) -> tuple[int, str]:
        try:
            await asyncio.gather(*(deliver(url) for _ in range(10)))
            after_burst = tenants.store.lookups
            rotated = rotate_webhook_secret(tenants.store.store, "a", PEPPER)
            tenants.clock.now += 4.9  # within the cached secret's lifetime
            await deliver(url)
            tenants.clock.now += 0.1
            await deliver(url)
            return after_burst, rotated
        finally:
            await notifier.aclose()

    with serve({"/hook": lambda h: h.reply(204)}) as receiver:
        after_burst, rotated = asyncio.run(scenario(f"{receiver.base_url}/hook"))
    assert after_burst == 1 and tenants.store.lookups == 2
    *cached, fresh = receiver.seen
    assert len(cached) == 11
    assert all(_verifies(tenants.secrets["a"], seen) for seen in cached)
    assert _verifies(rotated, fresh) and not _verifies(tenants.secrets["a"], fresh)


def test_without_a_secret_for_the_key_each_attempt_is_recorded_and_retried_until_it_has_one(
    tenants: Tenants,
) -> None:
    rotated: list[str] = []

    async def rotate_on_second_wait(_: float) -> None:
        # The operator gives the key a secret while the delivery is being retried.
        if len(attempts) == 2:
            rotated.append(rotate_webhook_secret(tenants.store.store, "legacy", PEPPER))
            tenants.clock.now += 5.0

    attempts: list[DeliveryAttempt] = []
    notifier = tenants.notifier(fallback=None, sleep=rotate_on_second_wait, attempts=4)
    assert not asyncio.run(notifier.can_sign("legacy"))
    assert asyncio.run(notifier.can_sign("a"))
    receiver, results = _deliveries(notifier, ["legacy"], attempts=attempts)
    assert results[0].outcome == "delivered"
    assert [(a.error, a.status) for a in attempts] == [
        ("webhooks_disabled", None),
        ("webhooks_disabled", None),
        (None, 204),
    ]
    assert "bgsvc keys webhook-secret legacy" in (attempts[0].message or "")
    [seen] = receiver.seen
    assert _verifies(rotated[0], seen)


def test_work_without_a_key_and_no_global_secret_is_never_sent_unsigned(
    tenants: Tenants,
) -> None:
    attempts: list[DeliveryAttempt] = []
    receiver, results = _deliveries(
        tenants.notifier(fallback=None, attempts=2), [None, "nobody"], attempts=attempts
    )
    assert [r.outcome for r in results] == ["exhausted", "exhausted"]
    assert {a.error for a in attempts} == {"webhooks_disabled"}
    assert receiver.seen == []


def test_with_the_key_store_down_the_last_secret_seen_still_signs(tenants: Tenants) -> None:
    notifier = tenants.notifier(attempts=1)
    signers = notifier.signers
    assert signers is not None
    asyncio.run(signers.signer("a"))
    tenants.store.down = True
    tenants.clock.now += 60.0
    attempts: list[DeliveryAttempt] = []
    receiver, results = _deliveries(notifier, ["a", "b"], attempts=attempts)
    # a was seen before the outage and still verifies; b never was, so it cannot be signed.
    assert [r.outcome for r in results] == ["delivered", "exhausted"]
    assert [a.error for a in attempts] == [None, "auth_unavailable"]
    [seen] = receiver.seen
    assert _verifies(tenants.secrets["a"], seen)


# End to end: keys, auth and the jobs routes of a real app, in both job modes.


def _add_key(settings_values: dict[str, Any], data_dir: Path, name: str) -> tuple[str, str]:
    """A key in the store the app opens; its API secret and its webhook secret."""
    store: KeyStore
    if settings_values.get("redis_url"):
        store = RedisKeyStore(settings_values["redis_url"], 2.0)
    else:
        store = SqliteKeyStore(data_dir / "keys.sqlite3")
    api_secret = new_secret()
    salt = new_webhook_salt()
    try:
        store.add(ApiKey(name=name, digest=digest_of(api_secret, PEPPER), webhook_salt=salt))
    finally:
        store.close()
    return api_secret, webhook_secret_of(salt, PEPPER)


def _wait_attempts(client: TestClient, url: str, key: str, timeout: float = 20.0) -> None:
    """Until the job or batch at ``url`` (read with ``key``) records a webhook attempt."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(url, headers={"X-Api-Key": key})
        assert response.status_code == 200, response.text
        if response.json().get("webhook_attempts"):
            return
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.02)


def test_a_keys_job_and_batch_webhooks_verify_with_that_keys_secret_only(
    jobs_client: Callable[..., TestClient],
    jobs_mode: dict[str, Any],
    data_dir: Path,
    photo_png: bytes,
) -> None:
    a_key, a_hook = _add_key(jobs_mode, data_dir, "a")
    _, b_hook = _add_key(jobs_mode, data_dir, "b")
    with serve({"/hook": lambda h: h.reply(204)}) as receiver:
        client = jobs_client(
            auth="required",
            auth_pepper=PEPPER,
            webhook_secret=GLOBAL,
            outbound_allow="127.0.0.1",
        )
        headers = {"X-Api-Key": a_key}
        callback = {"callback_url": f"{receiver.base_url}/hook"}
        job = submit(client, photo_png, data=callback, headers=headers)
        _wait_attempts(client, f"/jobs/{job['id']}", a_key)
        files = [("file", ("a.png", photo_png, "image/png"))]
        response = client.post("/batches", files=files, data=callback, headers=headers)
        assert response.status_code == 202, response.text
        _wait_attempts(client, f"/batches/{response.json()['id']}", a_key)
    events = sorted(Webhook(a_hook).verify(s.body, s.headers)["type"] for s in receiver.seen)
    assert events == ["batch.completed", "job.succeeded"]
    assert not any(_verifies(b_hook, s) or _verifies(GLOBAL, s) for s in receiver.seen)
