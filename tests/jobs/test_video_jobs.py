"""Videos through POST /jobs: decoded and encoded in a child process, each frame through
the model, the result a video again (or a zip of PNG frames)."""

from __future__ import annotations

import io
import json
import random
import struct
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc import pipeline, service_video
from bgsvc.jobs import progress
from tests.conftest import encode_image, subject_image
from tests.jobs.conftest import jobs_of, state_of, wait_status
from tests.jobs.test_tenants import QUOTA, Tenant, succeeded, tenants  # noqa: F401
from tests.videos import clip, decode


def post_video(client: TestClient, data: bytes, url: str = "/jobs", **params: str) -> Any:
    files = {"file": ("clip.bin", data, "application/octet-stream")}
    return client.post(url, params=params, files=files)


def submit_video(client: TestClient, data: bytes, **params: str) -> dict[str, Any]:
    response = post_video(client, data, **params)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def run_video(client: TestClient, data: bytes, **params: str) -> tuple[dict[str, Any], Any]:
    job = submit_video(client, data, **params)
    done = wait_status(client, job["id"], ("succeeded", "failed"), timeout=60)
    assert done["status"] == "succeeded", done
    return done, client.get(job["result_url"])


def long_header(data: bytes, seconds: float) -> bytes:
    """``data`` (a WebM) whose Segment header claims it lasts ``seconds``."""
    out = bytearray(data)
    at = out.find(b"\x44\x89")  # Matroska's Duration element, in the timecode's unit (ms)
    assert at > 0 and out[at + 2] == 0x88
    out[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)
    return bytes(out)


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


def test_webm_is_the_default_for_a_video_and_its_timestamps_are_kept(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    _, result = run_video(client, clip("webm", rate=10))
    assert result.headers["content-type"] == "video/webm"
    frames, stream = decode(result.content, alpha=True)
    assert [round(float(f.time or 0), 3) for f in frames] == [i / 10 for i in range(10)]
    assert stream.average_rate == 10


def test_mp4_puts_the_subject_on_bg_color_with_no_alpha(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    _, result = run_video(client, clip("mov"), format="mp4", bg_color="#00ff00")
    assert result.headers["content-type"] == "video/mp4"
    frames, stream = decode(result.content)
    assert len(frames) == 10 and stream.average_rate == 25
    assert frames[0].format.name == "yuv420p"
    assert (frames[0].width, frames[0].height) == (64, 48)


def test_a_rotated_clip_comes_back_upright(jobs_client: Callable[..., TestClient]) -> None:
    client = jobs_client()
    _, result = run_video(client, clip("mp4", rotation=90), format="zip")
    with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
        first = Image.open(io.BytesIO(archive.read("frame_00001.png")))
    # Stored 64x48, shown turned a quarter counterclockwise: 48x64.
    assert first.size == (48, 64)


def test_a_bt709_clip_keeps_its_colour_tags_and_its_colours(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    _, result = run_video(client, clip("mp4", bt709=True), format="mp4", bg_color="#ffffff")
    frames, stream = decode(result.content)
    ctx = stream.codec_context
    assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc) == (1, 1, 1)
    assert frames[0].colorspace == 1


def test_channels_alpha_gives_the_matte_as_a_greyscale_video(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    _, result = run_video(client, clip("mp4"), channels="alpha")
    frames, _ = decode(result.content, alpha=True)
    assert len(frames) == 10 and frames[0].format.name == "yuv420p"
    rgb = frames[0].to_ndarray(format="rgb24").astype(int)
    # Grey: the three channels agree (within the codec's rounding).
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() <= 8
    assert rgb.min() < 128 < rgb.max()


def test_zip_holds_every_frame_as_a_png_with_alpha(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    _, result = run_video(client, clip("matroska"), format="zip")
    assert result.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
        names = archive.namelist()
        first = Image.open(io.BytesIO(archive.read(names[0])))
        assert first.mode == "RGBA" and first.size == (64, 48)
        timing = json.loads(archive.read("timestamps.json"))
    assert names == [f"frame_{i:05d}.png" for i in range(1, 11)] + ["timestamps.json"]
    assert timing == {"fps": 25.0, "times": [i / 25 for i in range(10)]}


@pytest.mark.parametrize(
    ("source", "fmt", "kept"),
    [("webm", "webm", True), ("mp4", "mov", True), ("mp4", "mp4", True), ("mp4", "webm", False)],
)
def test_audio_is_passed_through_when_the_container_takes_its_codec(
    jobs_client: Callable[..., TestClient], source: str, fmt: str, kept: bool
) -> None:
    client = jobs_client()
    _, result = run_video(client, clip(source, audio=True), format=fmt)
    import av

    with av.open(io.BytesIO(result.content)) as container:
        assert bool(container.streams.audio) is kept
        assert len(container.streams.video) == 1


def test_a_running_video_reports_its_frames_done_and_in_all(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = jobs_client()
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    seen: list[tuple[str, int, int]] = []

    async def watch() -> None:
        backends = await jobs_of(client).queue.open(create=True)
        assert backends is not None
        store = backends.jobs
        original = store.progress

        async def progress(job_id: str, owner: str, done: int, total: int) -> None:
            await original(job_id, owner, done, total)
            # What GET /jobs/{id} shows at this moment.
            record = await store.get(job_id)
            assert record is not None
            body = record.public()
            seen.append((body["status"], body["frames_done"], body["frames_total"]))

        monkeypatch.setattr(store, "progress", progress)

    client.portal.call(watch)  # type: ignore[union-attr]
    job = submit_video(client, clip("mp4", frames=6))
    done = wait_status(client, job["id"], ("succeeded",), timeout=60)
    assert done["frames_done"] == done["frames_total"] == 6
    assert seen == [("running", n, 6) for n in range(7)]


def test_a_video_to_a_synchronous_route_is_413_naming_jobs(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    for url in ("/remove-background", "/api/remove"):
        refused = post_video(client, clip("webm"), url=url)
        assert refused.status_code == 413, url
        assert refused.json()["code"] == "video_needs_job"
        assert "/jobs" in refused.json()["message"]


def test_a_video_in_a_batch_runs_as_its_item_and_comes_back_in_the_zip(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    files = [
        ("file", ("a.webm", clip("webm", frames=6), "video/webm")),
        ("file", ("b.png", encode_image(subject_image()), "image/png")),
    ]
    submitted = client.post("/batches", files=files)
    assert submitted.status_code == 202, submitted.text
    deadline = time.monotonic() + 60
    while (body := client.get(submitted.json()["status_url"]).json())["status"] != "completed":
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    assert body["counts"]["succeeded"] == 2
    archive = zipfile.ZipFile(io.BytesIO(client.get(body["result_url"]).content))
    names = sorted(archive.namelist())
    assert names == ["a.webm", "b.png"]
    frames, _ = decode(archive.read("a.webm"), alpha=True)
    assert len(frames) == 6


def test_a_batch_of_more_videos_than_it_may_probe_is_refused_before_any_is_read(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = jobs_client()
    probes: list[bytes] = []
    service = state_of(client).service
    real = service.frame_count

    async def counted(data: bytes, *args: Any, **kwargs: Any) -> int:
        probes.append(data)
        return await real(data, *args, **kwargs)

    monkeypatch.setattr(service, "frame_count", counted)
    video = clip("webm", frames=2)
    files = [("file", (f"{i}.webm", video, "video/webm")) for i in range(11)]
    refused = client.post("/batches", files=files)
    assert refused.status_code == 413 and refused.json()["code"] == "batch_too_large"
    assert probes == []
    assert client.post("/batches", files=files[:10]).status_code == 202


def test_a_video_in_a_batch_beyond_the_video_limits_refuses_the_batch(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client(video_max_frames=5)
    files = [("file", ("a.webm", clip("webm"), "video/webm"))]
    refused = client.post("/batches", files=files)
    assert refused.status_code == 413 and refused.json()["code"] == "video_too_large"


@pytest.mark.parametrize(
    ("settings", "data"),
    [
        ({}, long_header(clip("webm"), 10 * 3600)),
        ({"video_max_frames": 5}, clip("mp4")),
        ({"video_max_frame_pixels": 1000}, clip("mp4")),
        ({"video_max_total_pixels": 64 * 48 * 5}, clip("mp4")),
        ({"video_max_duration_s": 0.2}, clip("mp4")),
    ],
    ids=["header-claims-ten-hours", "frames", "frame-pixels", "total-pixels", "duration"],
)
def test_a_video_beyond_a_limit_is_refused_at_submission_from_its_headers(
    jobs_client: Callable[..., TestClient], settings: dict[str, Any], data: bytes
) -> None:
    client = jobs_client(**settings)
    refused = post_video(client, data)
    assert refused.status_code == 413, refused.text
    assert refused.json()["code"] == "video_too_large"
    assert client.get("/health").status_code == 200


def test_a_video_holding_more_frames_than_its_header_says_fails_past_a_small_margin(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    # Ten frames whose header claims a tenth of a second: three frames at 25 fps, so
    # three credits; the decode stops at five (the margin), not at ten.
    data = long_header(clip("webm"), 0.1).replace(b"00:00:00.400000000", b"00:00:00.100000000")
    job = submit_video(client, data)
    done = wait_status(client, job["id"], ("failed",), timeout=60)
    assert done["error"]["code"] == "video_too_large"
    assert done["frames_done"] <= 5


def test_a_header_estimate_gives_way_to_the_frames_really_decoded(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    # WebM counts no frames: 10 frames with 0.44 s of audio estimate 11.
    done, _ = run_video(client, clip("webm", audio=True))
    assert done["frames_done"] == done["frames_total"] == 10


def test_a_cut_webm_whose_headers_survive_fails_and_costs_only_the_frames_that_ran(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)  # frames_done exact
    a, _ = tenants()
    whole = clip("webm", frames=30)
    files = {"file": ("clip.webm", whole[: len(whole) * 2 // 3], "video/webm")}
    job = a.post("/jobs", files=files)
    # 30 by its header, and the 2 frames a decode may find past it, held until it ends.
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "32"
    done = a.wait(job.json()["status_url"], lambda b: b["status"] == "failed")
    assert done["error"]["code"] == "invalid_video"
    assert "cut short" in done["error"]["message"]
    # The frames decoded before the cut went through the model: a file cut on purpose
    # must not buy that work for nothing. The ones that never ran are given back.
    assert QUOTA - 30 < a.credits_left() < QUOTA
    assert a.credits_left() == QUOTA - done["frames_done"]


def test_a_video_longer_than_its_header_keeps_the_credits_of_the_frames_that_ran(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)  # frames_done exact
    a, _ = tenants()
    # Three frames by its header, ten in the file: five at most (the margin, held at
    # submission) run through the model before the decode stops, and the job fails.
    data = long_header(clip("webm"), 0.1).replace(b"00:00:00.400000000", b"00:00:00.100000000")
    job = a.post("/jobs", files={"file": ("clip.webm", data, "video/webm")})
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "5"
    done = a.wait(job.json()["status_url"], lambda b: b["status"] == "failed")
    assert done["error"]["code"] == "video_too_large"
    assert 3 <= done["frames_done"] <= 5
    assert a.credits_left() == QUOTA - done["frames_done"]


def _random_mp4() -> bytes:
    # Seeded: bytes that ever made the probe answer otherwise could be run again.
    return b"\x00\x00\x00\x18ftypisom" + random.Random(4096).randbytes(4096)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda: clip("mp4")[: len(clip("mp4")) // 2], 400, "invalid_video"),
        (_random_mp4, 400, "invalid_video"),
        (lambda: clip("mp4", rate=10**6, time_base=Fraction(1, 10**6)), 400, "invalid_video"),
        (lambda: b"\x1a\x45\xdf\xa3" + b"\x00" * 64, 400, "invalid_video"),
    ],
    ids=["truncated", "random-bytes-mp4-signature", "absurd-frame-rate", "empty-matroska"],
)
def test_hostile_media_is_a_4xx_and_the_server_still_answers(
    jobs_client: Callable[..., TestClient], make: Callable[[], bytes], status: int, code: str
) -> None:
    client = jobs_client()
    refused = post_video(client, make())
    assert refused.status_code == status, refused.text
    assert refused.json()["code"] == code
    assert client.get("/health").status_code == 200


def test_a_decoder_past_its_deadline_is_killed_and_the_job_is_a_422(
    jobs_client: Callable[..., TestClient],
) -> None:
    # No real clip spins a decoder for ever; a deadline shorter than the child's own
    # start stands in for one (tests/video/test_sandbox.py has a child that never answers).
    client = jobs_client(video_step_timeout_s=0.001)
    refused = post_video(client, clip("mp4"))
    assert refused.status_code == 422
    assert refused.json()["code"] == "video_timeout"
    assert client.get("/health").status_code == 200


def test_video_formats_are_refused_for_a_photo(
    jobs_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = jobs_client()
    files = {"file": ("p.png", photo_png, "image/png")}
    refused = client.post("/remove-background", params={"format": "webm"}, files=files)
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_parameter"


def test_image_formats_are_refused_for_a_video(jobs_client: Callable[..., TestClient]) -> None:
    client = jobs_client()
    refused = post_video(client, clip("mp4"), format="gif")
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_parameter"


def test_a_video_costs_a_credit_a_frame_and_stays_its_tenants(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
) -> None:
    a, b = tenants()
    files = {"file": ("clip.mp4", clip("mp4", frames=7), "video/mp4")}
    job = a.post("/jobs", files=files)
    assert job.status_code == 202
    # The header's 7 and the margin a decode may find past it, held until the job ends.
    assert job.headers["X-Credits-Charged"] == "9"
    body = a.wait(job.json()["status_url"], succeeded)
    assert body["frames_total"] == 7
    assert a.credits_left() == QUOTA - 7 and b.credits_left() == QUOTA
    # Another tenant sees nothing of it: not its status, its progress or its result.
    probes = [b.get(body["status_url"]), b.get(body["result_url"]), b.delete(body["status_url"])]
    assert [p.status_code for p in probes] == [404] * 3


def test_a_video_the_quota_cannot_cover_is_402_and_nothing_runs(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
) -> None:
    a, _ = tenants()
    limits = a.client.app.state.limits  # type: ignore[attr-defined]
    a.client.portal.call(limits.consume_quota, "a", QUOTA, QUOTA - 3)  # type: ignore[union-attr]
    files = {"file": ("clip.mp4", clip("mp4", frames=4), "video/mp4")}
    refused = a.post("/jobs", files=files)
    assert refused.status_code == 402 and refused.json()["code"] == "quota_exceeded"
    assert refused.headers["X-Credits-Charged"] == "0"
    assert a.credits_left() == 3
    stats = a.client.portal.call(_queue_stats, a.client)  # type: ignore[union-attr]
    assert stats.unfinished == 0


async def _queue_stats(client: TestClient) -> Any:
    backends = await jobs_of(client).queue.open(create=True)
    assert backends is not None
    return await backends.jobs.stats()


def hostile_run_child(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The child that runs the job (not the one that probes it at submission) is
    tests/video/hostile_child.py in ``mode``."""
    hostile = Path(__file__).parent.parent / "video" / "hostile_child.py"
    command = (sys.executable, str(hostile), mode)
    real = service_video.child_config
    monkeypatch.setattr(
        service_video,
        "child_config",
        lambda *args, **kwargs: replace(real(*args, **kwargs), command=command),
    )


def test_a_child_that_garbles_the_header_fails_the_job_as_an_invalid_video(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a server error, which would be retried with a fresh child each attempt.
    hostile_run_child(monkeypatch, "garbled")
    client = jobs_client(job_max_attempts=3)
    job = submit_video(client, clip("mp4"))
    done = wait_status(client, job["id"], ("failed",), timeout=20)
    assert done["error"]["code"] == "invalid_video"
    assert done["attempts"] == 1


def test_a_child_that_sends_frames_without_end_is_stopped_at_the_frame_margin(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child that runs the job is one a decoder exploit has taken over: its header says
    # three frames, then it sends frames for ever. The serving process holds it to the
    # header's count and margin itself rather than running the model until the attempt
    # times out (and again on each retry).
    hostile_run_child(monkeypatch, "endless")
    client = jobs_client(job_timeout_s=8, job_max_attempts=1)
    job = submit_video(client, clip("mp4"))
    done = wait_status(client, job["id"], ("failed",), timeout=20)
    assert done["error"]["code"] == "video_too_large"
    assert client.get("/health").status_code == 200


def test_a_run_child_that_counts_more_frames_than_were_charged_runs_no_more_than_were(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The probe at submission counted ten frames (twelve held); the child that runs the job,
    # taken over by the file, says forty and sends them. The charge bounds the model's work.
    hostile_run_child(monkeypatch, "whole")
    a, _ = tenants()
    files = {"file": ("clip.mp4", clip("mp4", frames=10), "video/mp4")}
    job = a.post("/jobs", files=files)
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "12"
    done = a.wait(job.json()["status_url"], lambda b: b["status"] in ("failed", "succeeded"))
    assert done["status"] == "failed" and done["error"]["code"] == "video_too_large"
    assert 0 < done["frames_done"] <= 12
    assert QUOTA - a.credits_left() == done["frames_done"]


def test_a_child_that_announces_a_result_past_its_bounds_is_not_read(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 GiB announced for three 16x16 frames: refused unread, and the file's fault (it
    # was reported as a decode that ran out of time, since this process kills the child).
    hostile_run_child(monkeypatch, "huge_result")
    client = jobs_client(job_max_attempts=1)
    job = submit_video(client, clip("mp4"))
    done = wait_status(client, job["id"], ("failed",), timeout=20)
    assert done["error"]["code"] == "invalid_video"
    # The bound is the child's own memory wherever the frames' pixels would allow more.
    gib = 1024**3
    assert service_video.max_result_bytes((1920, 1080), 900, 2 * gib) == 2 * gib
    assert service_video.max_result_bytes((16, 16), 3, 2 * gib) < 65 * 1024**2


def test_a_cut_whose_header_counts_more_frames_than_were_charged_ends_where_the_charge_does(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cut reads the header in a child of its own; one the file takes over counts forty
    # frames for the ten charged at submission (twelve held). Were the job's charge not
    # passed to the cut, it would queue seven segments of model work for twelve credits.
    from bgsvc.jobs.segments import SEGMENT_OPTION
    from tests.jobs.test_video_segments import _segments

    real = pipeline.Remover.video_header
    monkeypatch.setattr(
        pipeline.Remover,
        "video_header",
        lambda self, data, options: replace(real(self, data, options), frames=40),
    )
    a, _ = tenants(video_segment_frames=6)
    files = {"file": ("clip.mp4", clip("mp4", frames=10), "video/mp4")}
    job = a.post("/jobs", files=files)
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "12"
    done = a.wait(job.json()["status_url"], lambda b: b["status"] in ("failed", "succeeded"))
    assert done["status"] == "succeeded" and done["frames_done"] == 10
    segments = _segments(a.client, done["id"])
    assert [s.options[SEGMENT_OPTION] for s in segments] == [[0, 6], [6, 12]]
    assert QUOTA - a.credits_left() == 10


def test_a_video_whose_header_undercounts_its_frames_pays_for_every_frame_that_ran(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
) -> None:
    a, _ = tenants()
    # Three frames whose headers say one: within the margin a decode may find beyond an
    # estimate, so the job succeeds with all three. Charging the header's one would sell
    # three frames for one credit; the margin is held at submission and what did not run
    # is given back at the end.
    data = long_header(clip("webm", frames=3), 0.04)
    data = data.replace(b"00:00:00.120000000", b"00:00:00.040000000")
    job = a.post("/jobs", files={"file": ("clip.webm", data, "video/webm")})
    assert job.status_code == 202
    done = a.wait(job.json()["status_url"], succeeded)
    assert done["frames_done"] == 3
    assert a.credits_left() == QUOTA - 3
    # An honest clip pays its frames exactly, whatever was held.
    files = {"file": ("clip.mp4", clip("mp4", frames=7), "video/mp4")}
    job = a.post("/jobs", files=files)
    a.wait(job.json()["status_url"], succeeded)
    assert a.credits_left() == QUOTA - 3 - 7


def hanging_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every video's probing child sleeps past its deadline (as one a file keeps busy)."""
    hang = (sys.executable, "-c", "import time; time.sleep(60)")
    real = pipeline.child_config
    monkeypatch.setattr(
        pipeline,
        "child_config",
        lambda *args, **kwargs: replace(real(*args, **kwargs), command=hang),
    )


def test_video_submissions_whose_probes_hang_take_no_place_a_photo_needs(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, photo_png: bytes
) -> None:
    # A submission holds its place until its video's headers are read: one that keeps the
    # probing child busy to its deadline must not leave removal requests without places.
    hanging_probes(monkeypatch)
    client = jobs_client(video_step_timeout_s=5, max_concurrent_uploads=2)
    with ThreadPoolExecutor(2) as pool:
        probes = []
        for _ in range(2):
            probes.append(pool.submit(post_video, client, clip("mp4")))
            time.sleep(0.5)  # waiting on its child (or refused)
        photos = [
            client.post("/remove-background", files={"file": ("p.png", photo_png, "image/png")})
            for _ in range(2)
        ]
        answers = sorted(p.result().status_code for p in probes)
    # One submission place (half of two): the second is refused at once, and both
    # places of the removal requests stayed theirs.
    assert answers == [422, 429]
    assert [p.status_code for p in photos] == [200, 200]


def test_video_probes_that_hang_do_not_hold_back_other_tenants_photos(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, photo_png: bytes
) -> None:
    # Headers that keep the probing child busy to its deadline (a file built to, or a
    # decoder exploit): the serving process only waits for the child, and that wait
    # must not take the stage threads every photo's decode needs.
    hanging_probes(monkeypatch)
    client = jobs_client(video_step_timeout_s=3)
    with ThreadPoolExecutor(2) as pool:
        # As many as the stage threads (two at least).
        probes = [pool.submit(post_video, client, clip("mp4")) for _ in range(2)]
        time.sleep(0.5)  # the probes are waiting on their children
        started = time.monotonic()
        photo = client.post("/remove-background", files={"file": ("p.png", photo_png, "image/png")})
        seconds = time.monotonic() - started
        assert [p.result().status_code for p in probes] == [422] * 2
    assert photo.status_code == 200
    assert seconds < 1.5
