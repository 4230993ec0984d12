"""DELETE /batches/{id} and the expiry of batch records."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bgsvc.batches import service as batches
from bgsvc.batches.intake import Item
from bgsvc.errors import BatchRunning
from bgsvc.inference.scheduler import Ticket
from bgsvc.jobs import segments as cut_video
from bgsvc.jobs.model import JobStatus
from bgsvc.jobs.queue import Backends, JobQueue
from bgsvc.jobs.sqlite.store import SqliteJobStore
from bgsvc.outbound.signing import generate_secret
from bgsvc.storage.filesystem import FilesystemStore
from tests.jobs.conftest import jobs_of, verifying_hook
from tests.jobs.test_batches import wait_batch
from tests.outbound.servers import serve
from tests.routes.test_errors import gated_loader


def submit_batch(client: TestClient, image: bytes, count: int, **kwargs: Any) -> dict[str, Any]:
    files = [("file", (f"{n}.png", image, "image/png")) for n in range(count)]
    response = client.post("/batches", files=files, **kwargs)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_files(data_dir: Path, batch: dict[str, Any]) -> list[Path]:
    """The result store's files of the batch's items (results, originals, sidecars)."""
    found: list[Path] = []
    for item in batch["items"]:
        folder = data_dir / "results" / "jobs" / item["job_id"]
        found.extend(p for p in folder.rglob("*") if p.is_file())
    return found


def test_deleting_a_finished_batch_removes_its_objects_and_records(
    jobs_client: Callable[..., TestClient], data_dir: Path, photo_png: bytes
) -> None:
    client = jobs_client(store_originals=True)
    batch = submit_batch(client, photo_png, 2)
    wait_batch(client, batch["status_url"])
    # Each item's result and (kept) original.
    assert len([p for p in stored_files(data_dir, batch) if "result" in p.name]) >= 2
    assert len([p for p in stored_files(data_dir, batch) if "original" in p.name]) >= 2

    assert client.delete(batch["status_url"]).status_code == 204
    assert stored_files(data_dir, batch) == []
    gone = client.get(batch["status_url"])
    assert gone.status_code == 404 and gone.json()["code"] == "batch_not_found"
    assert client.get(batch["result_url"]).status_code == 404
    for item in batch["items"]:
        assert client.get(f"/jobs/{item['job_id']}").status_code == 404
    again = client.delete(batch["status_url"])
    assert again.status_code == 404 and again.json()["code"] == "batch_not_found"


def test_deleting_a_batch_of_queued_items_cancels_them_and_calls_back_once(
    jobs_client: Callable[..., TestClient],
    hold_sync: Callable[[TestClient], list[Ticket]],
    data_dir: Path,
    photo_png: bytes,
) -> None:
    secret = generate_secret()
    events: list[dict[str, Any]] = []

    with serve({"/hook": verifying_hook(secret, events)}) as receiver:
        client = jobs_client(webhook_secret=secret, outbound_allow="127.0.0.1")
        hold_sync(client)  # nothing starts: both items stay queued
        batch = submit_batch(
            client, photo_png, 2, data={"callback_url": f"{receiver.base_url}/hook"}
        )
        assert client.delete(batch["status_url"]).status_code == 204
        assert client.get(batch["status_url"]).status_code == 404
        assert stored_files(data_dir, batch) == []
        deadline = time.monotonic() + 10
        while not events:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # The runner sees the canceled items on its next ticks; they must not call back again.
        time.sleep(jobs_of(client).runner.config.poll_s * 4)
    assert [e["type"] for e in events] == ["batch.completed"]
    data = events[0]["data"]
    assert data["id"] == batch["id"]
    assert data["counts"]["canceled"] == 2 and sum(data["counts"].values()) == 2
    assert 'bgsvc_jobs_total{outcome="canceled"} 2.0' in client.get("/metrics").text


def test_a_batch_with_a_running_item_is_409_and_a_delete_after_it_ends_is_204(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    gate = threading.Event()
    # One inference slot: one item infers (until the gate opens), one waits behind it
    # (claimed: running), one stays queued.
    client = jobs_client(loader=gated_loader(gate))
    batch = submit_batch(client, photo_png, 3)
    try:
        deadline = time.monotonic() + 10
        while client.get(batch["status_url"]).json()["counts"]["running"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        refused = client.delete(batch["status_url"])
        assert refused.status_code == 409
        body = refused.json()
        assert body["code"] == "batch_running" and "2 of the 3 items" in body["message"]
        counts = client.get(batch["status_url"]).json()["counts"]
        assert counts["canceled"] == 1 and counts["running"] == 2
    finally:
        gate.set()

    done = wait_batch(client, batch["status_url"])
    assert done["counts"]["succeeded"] == 2 and done["counts"]["canceled"] == 1
    assert client.delete(batch["status_url"]).status_code == 204
    assert client.get(batch["status_url"]).status_code == 404


def test_a_batch_whose_items_expired_shows_them_expired_and_its_record_is_purged(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = jobs_client(job_ttl_s=3600)
    batch = submit_batch(client, photo_png, 2)
    wait_batch(client, batch["status_url"])
    jobs = jobs_of(client)
    backends = jobs.queue.backends
    assert backends is not None
    later = time.time() + 3601
    assert client.portal.call(jobs.runner.expire, backends, later) == 2  # type: ignore[union-attr]
    expired = client.get(batch["status_url"]).json()
    assert expired["status"] == "completed" and expired["counts"]["expired"] == 2
    assert client.get(batch["result_url"]).json()["code"] == "job_no_result"

    # A TTL later still, the items' records go, and with them the batch's.
    client.portal.call(jobs.runner.expire, backends, later + 3601)  # type: ignore[union-attr]
    assert client.get(batch["status_url"]).status_code == 404
    assert client.portal.call(backends.jobs.get_batch, batch["id"]) is None  # type: ignore[union-attr]


def test_a_batch_whose_items_were_deleted_one_by_one_is_gone(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = jobs_client()
    batch = submit_batch(client, photo_png, 2)
    wait_batch(client, batch["status_url"])
    assert client.delete(f"/jobs/{batch['items'][0]['job_id']}").status_code == 204
    # One item left: the deleted one counts as expired.
    assert client.get(batch["status_url"]).json()["counts"]["expired"] == 1
    assert client.delete(f"/jobs/{batch['items'][1]['job_id']}").status_code == 204
    assert client.get(batch["status_url"]).json()["code"] == "batch_not_found"


def test_deleting_a_batch_keeps_a_video_being_stitched_and_its_credits(tmp_path: Path) -> None:
    # A batch's video whose segments all ran is queued again only to be stitched: DELETE
    # /batches must treat it as DELETE /jobs does (running, not canceled for a refund),
    # and once it has ended, delete its segments' parts with it.
    async def scenario() -> None:
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        results = FilesystemStore(tmp_path / "results", 3600)
        queue = JobQueue(
            lambda: Backends(store, results),
            lambda: True,
            queue_limit=100,
            queue_limit_per_key=10,
            concurrency=1,
            keep_originals=False,
        )
        refunds: list[tuple[str, int]] = []

        async def refund(tenant: str, credits: int) -> None:
            refunds.append((tenant, credits))

        queue.refund = refund
        batch = await batches.submit_batch(
            queue,
            [Item("clip.mp4", b"\x1aE\xdf\xa3 a video")],
            {"format": "webm"},
            client="10.0.0.1",
            callback_url=None,
            tenant="a",
            credits=[22],
        )
        job_id = batch.items[0].job_id
        parent = await store.claim("runner-1", time.time())
        assert parent is not None and parent.id == job_id
        cuts: list[tuple[int, int | None]] = [(0, 8), (8, None)]
        assert await store.split(job_id, "runner-1", cut_video.segment_records(parent, cuts), 12)
        parts = []
        for frames in (8, 4):
            segment = await store.claim("runner-1", time.time())
            assert segment is not None
            part = f"jobs/{job_id}/{segment.id}.webm"
            await asyncio.to_thread(results.put, part, b"part", "video/webm")
            parts.append(part)
            await store.progress(segment.id, "runner-1", frames, frames)
            assert await store.finish(
                segment.id, "runner-1", JobStatus.SUCCEEDED, time.time(), result_key=part
            )
        record, items = await batches.get_batch(queue, batch.id, "a")
        assert record.public(items)["items"][0]["status"] == "running"

        canceled: list[int] = []
        with pytest.raises(BatchRunning):
            await batches.delete_batch(
                queue,
                batch.id,
                notifier=None,
                background=set(),
                on_canceled=lambda: canceled.append(1),
                viewer="a",
            )
        assert canceled == [] and refunds == []
        stitch = await store.claim("runner-1", time.time())
        assert stitch is not None and stitch.id == job_id

        assert await store.finish(job_id, "runner-1", JobStatus.SUCCEEDED, time.time())
        await batches.delete_batch(
            queue, batch.id, notifier=None, background=set(), on_canceled=lambda: None, viewer="a"
        )
        assert refunds == []
        assert [await asyncio.to_thread(results.get, part) for part in parts] == [None, None]
        await store.close()

    asyncio.run(scenario())
