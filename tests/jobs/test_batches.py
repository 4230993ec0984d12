"""/batches: submission (multipart, zip), per-item status, the result zip, limits, webhook."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from bgsvc.inference.scheduler import Ticket
from bgsvc.outbound.signing import generate_secret
from tests.jobs.conftest import verifying_hook, wait_webhook_attempts
from tests.outbound.servers import serve


def wait_batch(client: TestClient, url: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(url).json()
        if body["status"] == "completed":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_multipart_batch_runs_each_item_and_a_bad_item_fails_alone(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = jobs_client()
    files = [
        ("file", ("photo.png", photo_png, "image/png")),
        ("file", ("photo.jpg", photo_png, "image/png")),
        ("file", ("broken.png", b"not an image", "image/png")),
    ]
    response = client.post("/batches?format=webp", files=files)
    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["location"] == batch["status_url"] == f"/batches/{batch['id']}"
    assert [i["name"] for i in batch["items"]] == ["photo.png", "photo.jpg", "broken.png"]

    done = wait_batch(client, batch["status_url"])
    assert done["counts"]["succeeded"] == 2 and done["counts"]["failed"] == 1
    broken = done["items"][2]
    assert broken["status"] == "failed" and broken["error"]["code"] == "unsupported_format"

    result = client.get(batch["result_url"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/zip"
    assert result.headers["batch-pending"] == "0"
    archive = zipfile.ZipFile(io.BytesIO(result.content))
    assert archive.namelist() == ["photo.webp", "photo-2.webp"]
    single = client.get(f"/jobs/{done['items'][0]['job_id']}/result").content
    assert archive.read("photo.webp") == single


def test_a_zip_batch_names_items_after_its_entries_and_skips_metadata(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = jobs_client()
    upload = zip_of(
        {"a/cat.png": photo_png, "b/dog.png": photo_png, "__MACOSX/._cat.png": b"x", "d/": b""}
    )
    response = client.post("/batches", files={"file": ("pets.zip", upload, "application/zip")})
    assert response.status_code == 202, response.text
    assert [i["name"] for i in response.json()["items"]] == ["cat.png", "dog.png"]
    wait_batch(client, response.json()["status_url"])
    names = zipfile.ZipFile(io.BytesIO(client.get(response.json()["result_url"]).content))
    assert names.namelist() == ["cat.png", "dog.png"]


def test_too_many_items_and_zip_bombs_are_refused_before_any_job(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = jobs_client(batch_max_items=2, max_upload_bytes=200_000)
    three = [("file", (f"{n}.png", photo_png, "image/png")) for n in range(3)]
    assert client.post("/batches", files=three).json()["code"] == "batch_too_large"
    bomb = zip_of({"bomb.png": b"\0" * 10_000_000})
    assert len(bomb) < 100_000
    refused = client.post("/batches", files={"file": ("b.zip", bomb, "application/zip")})
    assert refused.status_code == 413 and refused.json()["code"] == "batch_too_large"
    junk = client.post("/batches", files={"file": ("j.zip", b"PK not a zip", "application/zip")})
    assert junk.json()["code"] == "invalid_archive"
    assert client.get("/batches/batch_nope").json()["code"] == "batch_not_found"


def test_a_batch_larger_than_the_queue_room_gets_429_and_partial_results_are_409(
    jobs_client: Callable[..., TestClient],
    hold_sync: Callable[[TestClient], list[Ticket]],
    photo_png: bytes,
) -> None:
    client = jobs_client(job_queue_limit=2)
    hold_sync(client)
    two = [("file", (f"{n}.png", photo_png, "image/png")) for n in range(2)]
    batch = client.post("/batches", files=two).json()
    early = client.get(batch["result_url"])
    assert early.status_code == 409 and early.json()["code"] == "job_not_finished"
    refused = client.post("/batches", files=two[:1])
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert client.get(batch["status_url"]).json()["counts"]["queued"] == 2


def test_a_completed_batch_calls_back_once_with_a_signed_batch_completed(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    secret = generate_secret()
    events: list[dict[str, Any]] = []

    with serve({"/hook": verifying_hook(secret, events)}) as receiver:
        client = jobs_client(webhook_secret=secret, outbound_allow="127.0.0.1")
        files = [("file", (f"{n}.png", photo_png, "image/png")) for n in range(2)]
        batch = client.post(
            "/batches", files=files, data={"callback_url": f"{receiver.base_url}/hook"}
        ).json()
        wait_batch(client, batch["status_url"])
        wait_webhook_attempts(client, batch["status_url"])
    assert len(events) == 1
    assert events[0]["type"] == "batch.completed"
    data = events[0]["data"]
    assert data["id"] == batch["id"] and data["counts"]["succeeded"] == 2
    assert receiver.seen[0].headers["webhook-id"] == f"msg_{batch['id']}"


def test_a_batch_whose_items_are_all_canceled_still_calls_back_once(
    jobs_client: Callable[..., TestClient],
    hold_sync: Callable[[TestClient], list[Ticket]],
    photo_png: bytes,
) -> None:
    secret = generate_secret()
    events: list[dict[str, Any]] = []

    with serve({"/hook": verifying_hook(secret, events)}) as receiver:
        client = jobs_client(webhook_secret=secret, outbound_allow="127.0.0.1")
        hold_sync(client)  # nothing starts: both items stay queued until canceled
        files = [("file", (f"{n}.png", photo_png, "image/png")) for n in range(2)]
        batch = client.post(
            "/batches", files=files, data={"callback_url": f"{receiver.base_url}/hook"}
        ).json()
        for item in batch["items"]:
            assert client.delete(f"/jobs/{item['job_id']}").json()["status"] == "canceled"
        wait_webhook_attempts(client, batch["status_url"])
    assert [e["type"] for e in events] == ["batch.completed"]
    counts = events[0]["data"]["counts"]
    assert counts["canceled"] == 2 and sum(counts.values()) == 2
