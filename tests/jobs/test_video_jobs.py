"""Videos through POST /jobs: decoded and encoded in a child process, each frame through
the model, the result a video again (or a zip of PNG frames)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.jobs.conftest import wait_status
from tests.videos import clip, decode


def submit_video(client: TestClient, data: bytes, **params: str) -> dict[str, Any]:
    response = client.post(
        "/jobs", params=params, files={"file": ("clip.bin", data, "application/octet-stream")}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def run_video(client: TestClient, data: bytes, **params: str) -> tuple[dict[str, Any], Any]:
    job = submit_video(client, data, **params)
    done = wait_status(client, job["id"], ("succeeded", "failed"), timeout=60)
    assert done["status"] == "succeeded", done
    return done, client.get(job["result_url"])


@pytest.mark.parametrize(
    ("fmt", "content_type", "alpha_format"),
    [("webm", "video/webm", "yuva420p"), ("mov", "video/quicktime", "yuva444p12le")],
)
def test_a_video_comes_back_with_alpha_at_its_size_rate_and_frame_count(
    jobs_client: Callable[..., TestClient], fmt: str, content_type: str, alpha_format: str
) -> None:
    client = jobs_client()
    done, result = run_video(client, clip("mp4"), format=fmt)
    assert result.headers["content-type"] == content_type
    frames, stream = decode(result.content, alpha=True)
    assert len(frames) == 10
    assert (frames[0].width, frames[0].height) == (64, 48)
    assert stream.average_rate == 25
    assert frames[0].format.name == alpha_format
    alpha = frames[0].to_ndarray(format="rgba")[..., 3]
    assert alpha.min() < 128 < alpha.max()
    assert done["frames_done"] == done["frames_total"] == 10


def test_webm_is_the_default_for_a_video(jobs_client: Callable[..., TestClient]) -> None:
    client = jobs_client()
    _, result = run_video(client, clip("webm"))
    assert result.headers["content-type"] == "video/webm"
