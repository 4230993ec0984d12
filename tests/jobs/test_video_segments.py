"""A video longer than one segment: cut into segment jobs that any runner claims, then
stitched into one file by its own job, with the frames, timestamps, progress and
credits of the video run whole."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bgsvc.config import Settings
from bgsvc.inference.loader import load_engines
from bgsvc.jobs import progress
from bgsvc.jobs.model import JobError, JobRecord, JobStatus, segment_id
from bgsvc.jobs.runner import JobRunner
from bgsvc.service_video import frame_pts
from tests.jobs.conftest import jobs_of, state_of, wait_status
from tests.jobs.test_tenants import QUOTA, Tenant, succeeded, tenants  # noqa: F401
from tests.jobs.test_video_jobs import hostile_run_child, run_video, submit_video
from tests.routes.test_errors import gated_loader
from tests.videos import clip, decode

# 8 frames of the 64x48 test clip per segment.
EIGHT_FRAMES = 64 * 48 * 8


def _segments(client: TestClient, job_id: str) -> list[JobRecord]:
    async def read() -> list[JobRecord]:
        backends = await jobs_of(client).queue.open(create=False)
        assert backends is not None
        return await backends.jobs.segments_of(job_id)

    found: list[JobRecord] = client.portal.call(read)  # type: ignore[union-attr]
    return found


def _alphas(body: bytes) -> tuple[list[np.ndarray], list[int | None]]:
    frames, _ = decode(body, alpha=True)
    return [f.to_ndarray(format="rgba")[..., 3] for f in frames], [f.pts for f in frames]


def test_a_long_video_runs_as_segments_and_comes_back_as_the_whole_video_would(
    jobs_client: Callable[..., TestClient], jobs_mode: dict[str, Any], tmp_path: Path
) -> None:
    # The uncut reference on a queue and a data folder of its own: on shared ones, its
    # runner (which cuts nothing) could take the other app's video, or requeue the other
    # runner's jobs as a previous process's (both apps are this process).
    own: dict[str, Any] = {"data_dir": tmp_path / "whole"}
    if "redis_url" in jobs_mode:
        own["redis_url"] = jobs_mode["redis_url"].removesuffix("/0") + "/1"
    whole_client = jobs_client(**own)
    client = jobs_client(video_segment_pixels=EIGHT_FRAMES)
    results = {}
    # Key frames between the segments' first frames: each late segment seeks to the one
    # before its first frame and drops what comes before it.
    source = clip("mp4", frames=30, keyint=7)
    for fmt in ("mov", "webm"):
        _, results[fmt, "whole"] = run_video(whole_client, source, smooth="false", format=fmt)
        done, results[fmt, "cut"] = run_video(client, source, smooth="false", format=fmt)
        assert done["frames_done"] == done["frames_total"] == 30
        segments = _segments(client, done["id"])
        assert [s.id for s in segments] == [segment_id(done["id"], i) for i in range(4)]
        # Each ran once, to its end, and its share of the frames.
        assert [(s.status, s.attempts, s.frames_done) for s in segments] == [
            (JobStatus.SUCCEEDED, 1, 8),
            (JobStatus.SUCCEEDED, 1, 8),
            (JobStatus.SUCCEEDED, 1, 8),
            (JobStatus.SUCCEEDED, 1, 6),
        ]
    # The same frames at the same times: ProRes codes each frame alone, so cutting is
    # invisible in a mov; VP9 codes a frame from the ones before, and each part starts
    # afresh on a key frame, so a webm's frames differ by the codec's loss alone.
    for fmt, within in (("mov", 0.0), ("webm", 1.5)):
        (cut, cut_pts) = _alphas(results[fmt, "cut"].content)
        (whole, whole_pts) = _alphas(results[fmt, "whole"].content)
        assert cut_pts == whole_pts and len(cut_pts) == 30
        errors = [np.abs(a.astype(int) - b).mean() for a, b in zip(cut, whole, strict=True)]
        assert max(errors) <= within, (fmt, errors)


def test_a_cut_video_of_frames_larger_than_a_pipe_is_stitched(
    jobs_client: Callable[..., TestClient],
) -> None:
    # 320x240 cutouts are 300 KiB a frame, beyond what a pipe holds: the stitch must
    # hand frames back at the pace the encoder takes them.
    client = jobs_client(video_segment_pixels=320 * 240 * 3)
    done, result = run_video(client, clip("mp4", size=(320, 240), frames=8))
    frames, _ = decode(result.content, alpha=True)
    assert len(frames) == done["frames_done"] == 8
    assert (frames[0].width, frames[0].height) == (320, 240)


def test_the_segments_parts_go_when_the_video_ends(
    jobs_client: Callable[..., TestClient], data_dir: Path
) -> None:
    client = jobs_client(video_segment_pixels=EIGHT_FRAMES)
    done, _ = run_video(client, clip("mp4", frames=20))
    assert [s.result_key for s in _segments(client, done["id"])] != [None] * 3
    # Removed just after the video's end is recorded (a stitch that dies before that
    # needs them again).
    deadline = time.monotonic() + 30
    while (leftovers := [p.name for p in data_dir.rglob("*_s*.webm")]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert leftovers == []


def test_a_video_of_small_frames_is_cut_by_its_frame_count_too(
    jobs_client: Callable[..., TestClient],
) -> None:
    # Each frame is a forward pass at the model's size, however few pixels it has: by
    # pixels alone these 20 frames would be one segment, one attempt's work for all.
    client = jobs_client(video_segment_frames=6)
    done, result = run_video(client, clip("mp4", frames=20))
    assert [s.frames_done for s in _segments(client, done["id"])] == [6, 6, 6, 2]
    frames, _ = decode(result.content, alpha=True)
    assert len(frames) == done["frames_done"] == 20


def test_a_video_is_cut_no_further_than_the_frames_its_job_paid_for(
    jobs_client: Callable[..., TestClient],
) -> None:
    # The cut reads the header again in a child of its own: were that child to count more
    # frames than the probe at submission (a file that takes it over), the segments would
    # still end where the charge does.
    from bgsvc.options import RemovalOptions

    client = jobs_client(video_segment_frames=6)
    service = state_of(client).service
    data, options = clip("mp4", frames=20), RemovalOptions(format="webm")

    async def cut(paid: int | None) -> tuple[list[tuple[int, int | None]], int]:
        return await service.video_segments(data, options, paid)

    assert client.portal.call(cut, None) == ([(0, 6), (6, 12), (12, 18), (18, None)], 20)  # type: ignore[union-attr]
    assert client.portal.call(cut, 14) == ([(0, 6), (6, 12), (12, 14)], 14)  # type: ignore[union-attr]
    assert client.portal.call(cut, 22) == ([(0, 6), (6, 12), (12, 18), (18, 22)], 20)  # type: ignore[union-attr]


def test_a_video_whose_header_counts_a_frame_too_many_is_stitched_without_an_empty_part(
    jobs_client: Callable[..., TestClient],
) -> None:
    # This WebM's header gives no frame count; its duration x rate says 31 for 30 frames,
    # so the last segment (frames 30 on) starts past the end and runs none.
    client = jobs_client()
    data = clip("webm", frames=30, audio=True, rate=13)
    done, result = run_video(client, data)
    assert [s.frames_done for s in _segments(client, done["id"])] == [30, 0]
    frames, _ = decode(result.content, alpha=True)
    assert len(frames) == done["frames_done"] == 30


def test_a_segment_is_no_job_a_client_can_see_or_delete(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client(video_segment_pixels=EIGHT_FRAMES)
    done, _ = run_video(client, clip("mp4", frames=20))
    part = segment_id(done["id"], 1)
    answers = [
        client.get(f"/jobs/{part}"),
        client.get(f"/jobs/{part}/result"),
        client.delete(f"/jobs/{part}"),
    ]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert _segments(client, done["id"])[1].status is JobStatus.SUCCEEDED
    # Deleting the video takes its segments' records with it.
    assert client.delete(f"/jobs/{done['id']}").status_code == 204
    assert _segments(client, done["id"]) == []


def test_a_video_waiting_for_its_segments_shows_running_with_their_frames(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    client = jobs_client(video_segment_pixels=EIGHT_FRAMES)
    seen: list[tuple[str, int, int]] = []
    job = submit_video(client, clip("mp4", frames=20))

    while True:
        body = client.get(job["status_url"]).json()
        if "frames_total" in body:
            seen.append((body["status"], body["frames_done"], body["frames_total"]))
        if body["status"] not in ("queued", "running"):
            break
        time.sleep(0.01)
    assert body["status"] == "succeeded"
    statuses = {status for status, _, _ in seen}
    assert statuses <= {"running", "succeeded"}
    counts = [done for _, done, _ in seen]
    assert counts == sorted(counts) and counts[-1] == 20
    assert {total for _, _, total in seen} == {20}


def test_a_cut_video_costs_a_credit_a_frame_once_whatever_its_segments(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
) -> None:
    a, b = tenants(video_segment_pixels=EIGHT_FRAMES)
    files = {"file": ("clip.mp4", clip("mp4", frames=20), "video/mp4")}
    job = a.post("/jobs", files=files)
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "22"
    body = a.wait(job.json()["status_url"], succeeded)
    assert body["frames_done"] == 20
    assert a.credits_left() == QUOTA - 20 and b.credits_left() == QUOTA
    part = segment_id(body["id"], 0)
    assert [b.get(f"/jobs/{part}").status_code, a.get(f"/jobs/{part}").status_code] == [404, 404]


def test_a_cut_video_whose_end_is_missing_fails_and_keeps_the_frames_its_segments_ran(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
) -> None:
    a, _ = tenants(video_segment_pixels=EIGHT_FRAMES)
    whole = clip("webm", frames=30)
    files = {"file": ("clip.webm", whole[: len(whole) * 2 // 3], "video/webm")}
    job = a.post("/jobs", files=files)
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "32"
    done = a.wait(job.json()["status_url"], lambda b: b["status"] == "failed")
    assert done["error"]["code"] == "invalid_video"
    assert 0 < done["frames_done"] < 30
    assert a.credits_left() == QUOTA - done["frames_done"]


def test_a_cut_video_whose_joiner_miscounts_its_frames_fails_and_keeps_what_its_segments_ran(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The child that joins the parts parses the upload too, so a decoder exploit may run
    # it: one that joins the parts for real and says they hold no frame would, believed,
    # give the whole charge back for a video delivered whole.
    hostile_run_child(monkeypatch, "join_uncounted")
    a, _ = tenants(video_segment_pixels=EIGHT_FRAMES)
    files = {"file": ("clip.mp4", clip("mp4", frames=20), "video/mp4")}
    job = a.post("/jobs", files=files)
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "22"
    done = a.wait(job.json()["status_url"], lambda b: b["status"] == "failed")
    assert done["error"]["code"] == "invalid_video"
    assert done["frames_done"] == 20
    assert a.credits_left() == QUOTA - 20


def test_a_joiner_that_announces_more_than_its_parts_is_not_read(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A run's child is held to the frames' pixels; the joiner to the parts' bytes and the
    # upload's: 1 GiB for a 64 x 48 clip is refused at its header, not awaited.
    hostile_run_child(monkeypatch, "join_huge")
    a, _ = tenants(video_segment_pixels=EIGHT_FRAMES, job_max_attempts=1)
    files = {"file": ("clip.mp4", clip("mp4", frames=20), "video/mp4")}
    job = a.post("/jobs", files=files)
    done = a.wait(job.json()["status_url"], lambda b: b["status"] == "failed")
    assert done["error"]["code"] == "invalid_video"
    assert a.credits_left() == QUOTA - 20


class FailingEngine:
    """The tiny model, failing (a service error: a 500) from its ``after``-th pass on."""

    def __init__(self, inner: Any, after: int) -> None:
        self.inner, self.after, self.name, self.passes = inner, after, inner.name, 0

    def predict(self, rgb: Any) -> np.ndarray:
        self.passes += 1
        if self.passes > self.after:
            raise RuntimeError("the device went away")
        result: np.ndarray = self.inner.predict(rgb)
        return result


def test_a_cut_video_that_the_service_fails_gives_every_credit_back(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
) -> None:
    # Its file was fine: as for a video run whole, a failure of the service's costs the
    # tenant nothing, though a segment's frames went through the model.
    def loader(settings: Settings) -> Mapping[str, Any]:
        return {n: FailingEngine(e, after=12) for n, e in load_engines(settings).items()}

    # One segment at a time: the first runs whole before the model fails.
    a, _ = tenants(
        video_segment_pixels=EIGHT_FRAMES, job_max_attempts=1, max_concurrency=1, loader=loader
    )
    files = {"file": ("clip.mp4", clip("mp4", frames=20), "video/mp4")}
    job = a.post("/jobs", files=files)
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "22"
    done = a.wait(job.json()["status_url"], lambda b: b["status"] == "failed")
    assert done["frames_done"] >= 8  # the first segment ran whole
    assert a.credits_left() == QUOTA


@pytest.mark.parametrize("fmt", ["zip", "mov"])
def test_a_result_that_codes_each_frame_whole_is_bounded_by_its_weight(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    # A result is held whole where it is stored: a zip of PNGs or a ProRes video is about
    # as large as its frames, so it gets fewer of them than a webm of the same video.
    from bgsvc.video import sandbox

    budget = int(64 * 48 * 10 * sandbox.WHOLE_FRAME_BYTES[fmt])
    monkeypatch.setattr(sandbox, "WHOLE_RESULT_BYTES", budget)
    client = jobs_client()
    files = {"file": ("clip.mp4", clip("mp4", frames=20), "video/mp4")}
    refused = client.post("/jobs", params={"format": fmt}, files=files)
    assert refused.status_code == 413 and refused.json()["code"] == "video_too_large"
    accepted = client.post("/jobs", params={"format": "webm"}, files=files)
    assert accepted.status_code == 202
    done, result = run_video(client, clip("mp4", frames=8), format=fmt)
    assert done["status"] == "succeeded" and result.status_code == 200


@pytest.mark.parametrize(("source", "fmt"), [("webm", "webm"), ("mp4", "mp4")])
def test_a_cut_video_keeps_its_audio_and_its_frames_in_each_container(
    jobs_client: Callable[..., TestClient], source: str, fmt: str
) -> None:
    client = jobs_client(video_segment_pixels=EIGHT_FRAMES)
    done, result = run_video(client, clip(source, frames=20, audio=True), format=fmt)
    assert len(_segments(client, done["id"])) == 3
    import av

    with av.open(io.BytesIO(result.content)) as container:
        assert len(container.streams.audio) == 1
        frames = [f.pts for f in container.decode(video=0)]
    assert len(frames) == 20 and frames == sorted(frames)


def test_a_cut_video_is_stitched_whatever_attempts_its_split_used(
    jobs_client: Callable[..., TestClient],
) -> None:
    # The split's claim is one attempt and the stitch's another: with one attempt a job,
    # the stitch must not be refused as the video's second attempt after its segments ran.
    client = jobs_client(video_segment_pixels=EIGHT_FRAMES, job_max_attempts=1)
    done, result = run_video(client, clip("mp4", frames=20))
    assert done["frames_done"] == 20 and result.status_code == 200


def _cut_by_a_hostile_child(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, mode: str
) -> tuple[TestClient, dict[str, Any]]:
    """A 20-frame video cut into segments whose children are tests/video/hostile_child.py
    in ``mode``, one attempt each: the app and the video job as it ended."""
    hostile_run_child(monkeypatch, mode)
    client = jobs_client(video_segment_pixels=EIGHT_FRAMES, job_max_attempts=1)
    job = submit_video(client, clip("mp4", frames=20))
    done: dict[str, Any] = wait_status(client, job["id"], ("succeeded", "failed"), timeout=60)
    return client, done


def test_a_segments_child_is_held_to_the_segments_frames(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child that runs a segment is one a decoder exploit has taken over: asked for
    # 8 frames, it sends the 40 its header claims. Each would cost a forward pass the
    # video paid for once: it is held to its range, as a whole video's child is to its
    # header's count.
    client, done = _cut_by_a_hostile_child(jobs_client, monkeypatch, "whole")
    assert done["status"] == "failed" and done["error"]["code"] == "video_too_large"
    cut = _segments(client, done["id"])
    assert all((s.frames_done or 0) <= 8 for s in cut[:2])


def test_with_no_encoders_kept_a_segments_child_encodes_its_own_frames(
    jobs_client: Callable[..., TestClient],
) -> None:
    # BGSVC_VIDEO_ENCODER_KEEP_S=0: one child a segment, decoding and encoding, as a
    # whole video's does; the cut video is the same.
    client = jobs_client(video_segment_pixels=EIGHT_FRAMES, video_encoder_keep_s=0)
    assert state_of(client).service.video.encoders is None
    done, result = run_video(client, clip("mp4", frames=20))
    assert done["frames_done"] == 20 and result.status_code == 200
    assert len(decode(result.content)[0]) == 20


def test_a_segments_child_that_sends_broken_stream_parameters_fails_before_the_model(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a segment's decoding child says of the stream goes on to an encoding child
    # that serves other videos after this one: a value no file gives is the video's 4xx,
    # found before its frames cost a forward pass.
    client, done = _cut_by_a_hostile_child(jobs_client, monkeypatch, "bad_stream")
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_video"
    assert all(not s.frames_done for s in _segments(client, done["id"]))


@pytest.mark.parametrize(
    ("meta", "pts"),
    [
        ({"pts": 7}, 7),
        ({"pts": -3}, -3),
        ({}, None),
        ({"pts": None}, None),
        ({"pts": "7"}, None),
        ({"pts": 7.0}, None),
        ({"pts": True}, None),
        ({"pts": 2**70}, None),
        ({"pts": -(2**70)}, None),
    ],
)
def test_a_frame_timestamp_passed_to_the_encoder_is_an_integer_in_range(
    meta: dict[str, Any], pts: int | None
) -> None:
    # A decoding child a decoder exploit runs says what it likes; the encoding child
    # serves other videos, so it is given an integer FFmpeg takes, or nothing.
    assert frame_pts(meta) == pts


def test_a_segments_child_that_only_says_it_is_getting_there_is_stopped(
    jobs_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A late segment's child reports its progress through the frames before its range,
    # so a slow, busy node does not miss the step deadline; one that reports without end
    # is stopped at the reports its range can need, not at the attempt's time limit.
    _, done = _cut_by_a_hostile_child(jobs_client, monkeypatch, "skipping")
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_video"
    assert "skips" in done["error"]["message"]


def test_a_cut_video_that_expires_before_its_stitch_keeps_the_credits_its_segments_ran(
    tenants: Callable[..., tuple[Tenant, Tenant]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its segments ran every frame through the model; then the video sat queued for its
    # stitch (or waited on a segment) past the TTL: it never finished, but it did run.
    real = JobRunner._attempt

    async def stop_before_the_stitch(
        self: JobRunner, backends: Any, record: JobRecord, *rest: Any
    ) -> None:
        if not record.segments:
            return await real(self, backends, record, *rest)
        # The node stops here: the video goes back to the queue, and no runner is left.
        self._stopping = True
        await backends.jobs.requeue(record.id, self.owner, JobError("canceled", "shutdown"))

    monkeypatch.setattr(JobRunner, "_attempt", stop_before_the_stitch)
    a, _ = tenants(video_segment_pixels=EIGHT_FRAMES, job_ttl_s=3600)
    job = a.post("/jobs", files={"file": ("clip.mp4", clip("mp4", frames=20), "video/mp4")})
    assert job.status_code == 202 and job.headers["X-Credits-Charged"] == "22"
    video_id = job.json()["id"]
    jobs = jobs_of(a.client)
    backends = jobs.queue.backends
    assert backends is not None

    def queued_to_stitch() -> bool:
        found = a.client.portal.call(backends.jobs.get, video_id)  # type: ignore[union-attr]
        return found is not None and found.status is JobStatus.QUEUED and found.attempts > 0

    deadline = time.monotonic() + 60
    while not queued_to_stitch():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [s.frames_done for s in _segments(a.client, video_id)] == [8, 8, 4]
    later = time.time() + 3601
    assert a.client.portal.call(jobs.runner.expire, backends, later) >= 1  # type: ignore[union-attr]
    assert a.get(f"/jobs/{video_id}").json()["status"] == "expired"
    assert a.credits_left() == QUOTA - 20


def test_a_node_running_a_segment_claims_the_next_job_only_once_it_is_down_to_its_last_frames(
    jobs_client: Callable[..., TestClient],
) -> None:
    # Two segments on one node would share its slot frame by frame, each at half speed
    # toward its attempt's time limit: the next is left for a node with a slot free
    # until the running one's last forward passes, which the next one's start overlaps.
    # Each forward pass takes 50 ms, so that overlap lasts long enough to be seen.
    gate = threading.Event()
    gate.set()
    client = jobs_client(
        video_segment_pixels=EIGHT_FRAMES,
        max_concurrency=1,
        max_queue=4,
        loader=gated_loader(gate, delay=0.05),
    )
    runner = jobs_of(client).runner
    scheduler = runner.scheduler

    def state() -> tuple[int, int, int, int]:
        # Read in the event loop, so the counts are of one moment. Tickets, not tasks, say
        # who holds the slot: a segment that has given its ticket back may still be
        # recording its end while the next job starts. The video itself may still hold
        # its ticket for a moment after queueing its segments, so the first one can be
        # claimed behind it, as any job behind a job that is not a segment.
        others = len(runner.running - runner.segments.keys())
        finishing = sum(p.finishing for p in runner.segments.values())
        return len(runner.segments), others, scheduler.admitted, finishing

    job = submit_video(client, clip("mp4", frames=30))
    seen: set[tuple[int, int, int, int]] = set()
    deadline = time.monotonic() + 60
    while client.get(job["status_url"]).json()["status"] != "succeeded":
        seen.add(client.portal.call(state))  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert (1, 0, 1, 0) in seen  # a segment alone, with frames to go
    assert (2, 0, 2, 1) in seen  # the next one, claimed behind a finishing one
    only_segments = [s for s in seen if s[0] and not s[1]]
    assert all(admitted <= 1 + finishing for _, _, admitted, finishing in only_segments)
