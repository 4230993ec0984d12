"""The runner: priority of sync traffic, retries, the time limit, expiry, restarts and
webhooks."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc.config import Settings
from bgsvc.errors import JobsUnavailable, StorageUnavailable
from bgsvc.inference.loader import load_engines
from bgsvc.inference.scheduler import Ticket
from bgsvc.outbound.signing import generate_secret
from bgsvc.pipeline import Predictor
from tests.conftest import encode_image, subject_image
from tests.jobs.conftest import (
    jobs_of,
    state_of,
    submit,
    verifying_hook,
    wait_status,
    wait_webhook_attempts,
)
from tests.outbound.servers import serve


class Flaky:
    """The real engine, but the first ``failures`` forward passes raise, and each pass
    first sleeps ``delay_s`` (in the inference thread, as a slow model would)."""

    def __init__(self, engine: Predictor, failures: int = 0, delay_s: float = 0.0) -> None:
        self.engine = engine
        self.failures = failures
        self.delay_s = delay_s
        self.calls = 0

    @property
    def name(self) -> str:
        return self.engine.name

    def predict(self, rgb: Image.Image) -> np.ndarray:
        self.calls += 1
        time.sleep(self.delay_s)
        if self.calls <= self.failures:
            raise RuntimeError("transient failure")
        return self.engine.predict(rgb)


def flaky_loader(
    **kwargs: float,
) -> tuple[Callable[[Settings], Mapping[str, Predictor]], list[Flaky]]:
    made: list[Flaky] = []

    def load(settings: Settings) -> Mapping[str, Predictor]:
        engines = load_engines(settings)
        wrapped = {name: Flaky(engine, **kwargs) for name, engine in engines.items()}  # type: ignore[arg-type]
        made.extend(wrapped.values())
        return wrapped

    return load, made


def test_no_job_starts_while_sync_requests_fill_the_slots(
    jobs_client: Callable[..., TestClient],
    hold_sync: Callable[[TestClient], list[Ticket]],
    photo_png: bytes,
) -> None:
    client = jobs_client()
    tickets = hold_sync(client)
    job = submit(client, photo_png)
    runner = jobs_of(client).runner
    # Several polls of the runner go by; it must not take the job meanwhile.
    time.sleep(runner.config.poll_s * 4)
    assert client.get(job["status_url"]).json()["status"] == "queued"
    assert state_of(client).scheduler.admitted == len(tickets)

    for ticket in tickets:
        ticket.close()
    assert wait_status(client, job["id"], ("succeeded",))["attempts"] == 1


def test_a_failing_attempt_is_retried_and_the_job_succeeds(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    loader, made = flaky_loader(failures=1)
    client = jobs_client(loader=loader)
    job = submit(client, photo_png)
    done = wait_status(client, job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert made[0].calls == 2
    assert 'bgsvc_jobs_total{outcome="retried"} 1.0' in client.get("/metrics").text


def test_a_job_past_its_time_limit_on_every_attempt_fails_with_job_timeout(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    loader, _ = flaky_loader(delay_s=0.6)
    client = jobs_client(loader=loader, job_timeout_s=0.2, job_max_attempts=2)
    job = submit(client, photo_png)
    done = wait_status(client, job["id"], ("failed",))
    assert done["attempts"] == 2
    assert done["error"]["code"] == "job_timeout"
    assert 'bgsvc_jobs_total{outcome="failed"} 1.0' in client.get("/metrics").text


def test_jobs_and_results_expire_after_the_ttl(
    jobs_client: Callable[..., TestClient], data_dir: Path, photo_png: bytes
) -> None:
    client = jobs_client(job_ttl_s=3600)
    job = submit(client, photo_png)
    wait_status(client, job["id"], ("succeeded",))
    jobs = jobs_of(client)
    backends = jobs.queue.backends
    assert backends is not None
    later = time.time() + 3601
    assert client.portal.call(jobs.runner.expire, backends, later) == 1  # type: ignore[union-attr]

    assert client.get(job["status_url"]).json()["status"] == "expired"
    gone = client.get(job["result_url"])
    assert gone.status_code == 410 and gone.json()["code"] == "job_expired"
    assert not (data_dir / "results" / "jobs" / job["id"] / "result.png").exists()
    # A TTL later still, the record itself goes.
    client.portal.call(jobs.runner.expire, backends, later + 3601)  # type: ignore[union-attr]
    assert client.get(job["status_url"]).status_code == 404


def test_a_restart_keeps_finished_jobs_and_runs_queued_and_running_ones(
    jobs_client: Callable[..., TestClient],
    hold_sync: Callable[[TestClient], list[Ticket]],
    photo_png: bytes,
    photo_jpeg: bytes,
) -> None:
    first = jobs_client()
    done = submit(first, photo_png)
    wait_status(first, done["id"], ("succeeded",))
    before = first.get(done["result_url"]).content
    hold_sync(first)
    orphan = submit(first, photo_png)
    waiting = submit(first, photo_jpeg)
    # Claimed by a runner of an earlier incarnation of this process, which is gone.
    backends = jobs_of(first).queue.backends
    assert backends is not None
    dead = f"{jobs_of(first).runner.owner.rsplit(':', 1)[0]}:dead"
    claimed = first.portal.call(backends.jobs.claim, dead, time.time())  # type: ignore[union-attr]
    assert claimed is not None and claimed.id == orphan["id"]  # the oldest queued first
    first.__exit__(None, None, None)

    second = jobs_client()
    assert second.get(done["result_url"]).content == before
    again = wait_status(second, orphan["id"], ("succeeded",))
    assert again["attempts"] == 2
    assert wait_status(second, waiting["id"], ("succeeded",))["attempts"] == 1
    assert second.get(again["result_url"]).status_code == 200


def test_a_finished_job_calls_back_with_a_signed_webhook_and_records_the_attempt(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    secret = generate_secret()
    events: list[dict[str, object]] = []

    with serve({"/hook": verifying_hook(secret, events)}) as receiver:
        client = jobs_client(webhook_secret=secret, outbound_allow="127.0.0.1")
        forbidden = client.post(
            "/jobs",
            files={"file": ("p.png", photo_png, "image/png")},
            data={"callback_url": "http://10.0.0.1/hook"},
        )
        assert forbidden.json()["code"] == "url_forbidden"
        job = submit(client, photo_png, data={"callback_url": f"{receiver.base_url}/hook"})
        wait_status(client, job["id"], ("succeeded",))
        wait_webhook_attempts(client, job["status_url"])
    status = client.get(job["status_url"]).json()
    assert [a["status"] for a in status["webhook_attempts"]] == [204]
    assert len(events) == 1
    event = events[0]
    assert event["type"] == "job.succeeded"
    data = event["data"]
    assert isinstance(data, dict) and data["id"] == job["id"] and data["status"] == "succeeded"
    assert receiver.seen[0].headers["webhook-id"] == f"msg_{job['id']}"


def test_a_claim_that_fails_in_the_store_gives_its_inference_slot_back(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = jobs_client()
    jobs = jobs_of(client)
    submit(client, encode_image(subject_image()))  # opens the stores
    backends = jobs.queue.backends
    assert backends is not None
    calls: list[str] = []

    async def failing_claim(owner: str, now: float) -> None:
        calls.append(owner)
        raise JobsUnavailable("store down")

    monkeypatch.setattr(backends.jobs, "claim", failing_claim)
    jobs.queue.wake.set()
    deadline = time.monotonic() + 10
    while len(calls) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    scheduler = state_of(client).scheduler
    # Read in the event loop: from this thread, a tick could be seen between its ticket
    # and the claim that fails.
    assert client.portal.call(lambda: scheduler.admitted) == 0  # type: ignore[union-attr]


class _MostSet(set[Any]):
    """A set that remembers the most members it ever held at once."""

    most = 0

    def add(self, item: Any) -> None:
        super().add(item)
        self.most = max(self.most, len(self))


def test_with_only_jobs_running_one_more_waits_behind_them_and_no_more(
    jobs_client: Callable[..., TestClient],
    hold_sync: Callable[[TestClient], list[Ticket]],
    photo_png: bytes,
) -> None:
    loader, _ = flaky_loader(delay_s=0.3)
    client = jobs_client(loader=loader, max_concurrency=1, max_queue=4)
    runner = jobs_of(client).runner
    # Swapped in while the runner holds nothing: each job's task removes itself from the
    # set it was added to, and the runner counts that set to decide whether to claim.
    running = _MostSet()
    runner.running = running
    # All four queued while a sync request holds the slot, so the runner has the choice
    # whatever the machine's speed (submitted one by one, each could end before the next
    # arrived on a slow one); every job it holds is counted, not sampled.
    tickets = hold_sync(client)
    ids = [submit(client, photo_png)["id"] for _ in range(4)]
    for ticket in tickets:
        ticket.close()
    for job_id in ids:
        wait_status(client, job_id, ("succeeded",), timeout=30)
    # One inferring and one waiting (its input read and decoded meanwhile), never more.
    assert running.most == 2


def test_a_job_whose_input_cannot_be_read_is_retried_not_left_running(
    jobs_client: Callable[..., TestClient], photo_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store that fails the read of the job's input once (a disk error, S3 down): the
    # attempt fails and the job is retried, rather than staying "running" to its lease.
    from bgsvc.storage.filesystem import FilesystemStore

    failed: list[str] = []
    real_get = FilesystemStore.get

    def get(self: FilesystemStore, key: str) -> Any:
        if not failed and key.endswith("/original"):  # the job's input (jobs.queue.input_key)
            failed.append(key)
            raise StorageUnavailable(f"cannot read {key}: Input/output error")
        return real_get(self, key)

    monkeypatch.setattr(FilesystemStore, "get", get)
    client = jobs_client()
    job = submit(client, photo_png)
    done = wait_status(client, job["id"], ("succeeded", "failed"))
    assert failed and (done["status"], done["attempts"]) == ("succeeded", 2)
