"""The shared mode with Redis gone: jobs are refused with a retry hint, sync requests are
served, no inference slot is lost to the failing store, and all recovers once it is back."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.conftest import encode_image, subject_image
from tests.jobs.conftest import jobs_of, state_of, submit, wait_status
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.redis


def test_with_redis_down_jobs_are_503_sync_is_200_and_no_slot_leaks(
    make_client: Callable[..., TestClient],
    redis_server: RedisServer,  # noqa: F811
    tmp_path: object,
) -> None:
    client = make_client(redis_url=redis_server.url, data_dir=str(tmp_path))
    image = encode_image(subject_image())
    first = submit(client, image)
    assert wait_status(client, first["id"], ("succeeded",))["attempts"] == 1

    redis_server.stop()
    runner = jobs_of(client).runner
    scheduler = state_of(client).scheduler
    time.sleep(1.0)  # many runner ticks against the dead store
    refused = client.post("/jobs", files={"file": ("p.png", image, "image/png")})
    assert refused.status_code == 503
    assert refused.json()["code"] == "jobs_unavailable"
    assert refused.headers["retry-after"] == "5"
    assert client.get(f"/jobs/{first['id']}").status_code == 503
    sync = client.post("/remove-background", files={"file": ("p.png", image, "image/png")})
    assert sync.status_code == 200
    # Every failed claim gave its slot back.
    assert scheduler.admitted == 0 and not runner.running

    redis_server.start()
    second = submit(client, encode_image(subject_image((100, 70))))
    assert wait_status(client, second["id"], ("succeeded",))["status"] == "succeeded"
