"""Animations through POST /jobs: the way for those longer than a request takes."""

from __future__ import annotations

import io
from collections.abc import Callable

from fastapi.testclient import TestClient
from PIL import Image

from tests.jobs.conftest import submit, wait_status
from tests.routes.test_animated import animation


def test_a_job_takes_an_animation_longer_than_a_request_does(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client(sync_max_frames=2, job_max_frames=3)
    data = animation("GIF")
    refused = client.post("/remove-background", files={"file": ("a.gif", data)})
    assert refused.status_code == 413 and refused.json()["code"] == "too_many_frames"

    job = submit(client, data)
    wait_status(client, job["id"], ("succeeded",))
    result = client.get(job["result_url"])
    assert result.headers["content-type"] == "image/gif"
    img = Image.open(io.BytesIO(result.content))
    assert img.format == "GIF" and img.n_frames == 3


def test_a_job_over_its_own_frame_limit_fails_with_too_many_frames(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client(job_max_frames=2)
    job = submit(client, animation("GIF"))
    done = wait_status(client, job["id"], ("failed",))
    assert done["error"]["code"] == "too_many_frames"
