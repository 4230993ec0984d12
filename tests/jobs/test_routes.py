"""The /jobs routes: every answer and state a client can see."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from bgsvc.inference.scheduler import Ticket
from tests.jobs.conftest import submit, wait_status
from tests.result_folders import settled, visible


def test_a_job_succeeds_with_the_same_image_as_the_sync_endpoint(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = jobs_client()
    response = client.post(
        "/jobs?format=webp", files={"file": ("photo.png", photo_png, "image/png")}
    )
    assert response.status_code == 202
    job = response.json()
    assert set(job) == {"id", "status", "status_url", "result_url"}
    assert response.headers["location"] == job["status_url"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"

    done = wait_status(client, job["id"], ("succeeded",))
    assert done["attempts"] == 1 and done["error"] is None
    assert done["started_at"] and done["finished_at"]
    assert done["result_url"] == job["result_url"]
    result = client.get(job["result_url"])
    sync = client.post(
        "/remove-background?format=webp", content=photo_png, headers={"content-type": "image/png"}
    )
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/webp"
    assert result.content == sync.content


def test_an_unknown_job_is_404_on_every_route(jobs_client: Callable[..., TestClient]) -> None:
    client = jobs_client()
    for method, path in (
        ("GET", "/jobs/nope"),
        ("GET", "/jobs/nope/result"),
        ("DELETE", "/jobs/nope"),
    ):
        response = client.request(method, path)
        assert response.status_code == 404
        assert response.json()["code"] == "job_not_found"


def test_a_queued_job_is_409_for_its_result_then_canceled_by_delete(
    jobs_client: Callable[..., TestClient],
    hold_sync: Callable[[TestClient], list[Ticket]],
    photo_png: bytes,
) -> None:
    client = jobs_client()
    hold_sync(client)
    job = submit(client, photo_png)
    early = client.get(job["result_url"])
    assert early.status_code == 409 and early.json()["code"] == "job_not_finished"

    canceled = client.delete(job["status_url"])
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    after = client.get(job["result_url"])
    assert after.status_code == 409 and after.json()["code"] == "job_no_result"
    assert client.delete(job["status_url"]).status_code == 204
    assert client.get(job["status_url"]).status_code == 404


def test_deleting_a_finished_job_removes_its_result_and_record(
    jobs_client: Callable[..., TestClient], data_dir: Path, photo_png: bytes
) -> None:
    client = jobs_client()
    job = submit(client, photo_png)
    wait_status(client, job["id"], ("succeeded",))
    folder = data_dir / "results" / "jobs" / job["id"]
    assert settled(folder, ["result.png"], timeout=10) == ["result.png"]

    assert client.delete(job["status_url"]).status_code == 204
    assert client.get(job["status_url"]).status_code == 404
    assert visible(folder) == []


def test_the_same_idempotency_key_returns_the_same_job_and_other_content_is_refused(
    jobs_client: Callable[..., TestClient], photo_png: bytes, photo_jpeg: bytes
) -> None:
    client = jobs_client()
    first = submit(client, photo_png, headers={"Idempotency-Key": "order-42"})
    again = submit(client, photo_png, headers={"Idempotency-Key": "order-42"})
    other = submit(client, photo_png, headers={"Idempotency-Key": "order-43"})
    assert again["id"] == first["id"] and other["id"] != first["id"]

    reused = client.post(
        "/jobs",
        files={"file": ("p.jpg", photo_jpeg, "image/jpeg")},
        headers={"Idempotency-Key": "order-42"},
    )
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"


def test_submissions_beyond_the_queue_limit_get_429_with_retry_after(
    jobs_client: Callable[..., TestClient],
    hold_sync: Callable[[TestClient], list[Ticket]],
    photo_png: bytes,
) -> None:
    client = jobs_client(job_queue_limit=2)
    hold_sync(client)
    submit(client, photo_png)
    submit(client, photo_png)
    refused = client.post("/jobs", content=photo_png, headers={"content-type": "image/png"})
    assert refused.status_code == 429
    assert refused.json()["code"] == "job_queue_full"
    assert int(refused.headers["retry-after"]) >= 1


def test_bad_submissions_are_refused_before_anything_is_queued(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = jobs_client(max_upload_bytes=len(photo_png) + 10)
    png = {"content-type": "image/png"}
    cases = [
        (client.post("/jobs?format=bmp", content=photo_png, headers=png), 400, "invalid_parameter"),
        (
            client.post("/jobs?model=nope", content=photo_png, headers=png),
            400,
            "model_not_available",
        ),
        (
            client.post("/jobs", content=b"", headers={"content-type": "text/plain"}),
            400,
            "missing_image",
        ),
        (client.post("/jobs", content=photo_png * 2, headers=png), 413, "upload_too_large"),
        (
            client.post(
                "/jobs?callback_url=http://127.0.0.1:9/hook", content=photo_png, headers=png
            ),
            400,
            "webhooks_disabled",
        ),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["code"]) == (status, code)


def test_an_undecodable_image_fails_the_job_at_once_without_retries(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    job = submit(client, b"definitely not an image")
    done = wait_status(client, job["id"], ("failed",))
    assert done["attempts"] == 1
    assert done["error"]["code"] == "unsupported_format"
    assert client.get(job["result_url"]).json()["code"] == "job_no_result"
