"""A video cut into segments on a fleet sharing one Redis: the segments run on whichever
nodes have room, and a node killed with SIGKILL while it runs one loses nothing: the
video succeeds whole, every segment finished once, the killed one run again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from bgsvc.cluster import Cluster
from bgsvc.cluster.nodes import Node
from bgsvc.jobs.model import segment_id
from tests.cluster.conftest import SLOW, model_env, record, wait_for
from tests.procs import children
from tests.result_folders import settled
from tests.videos import clip, decode

pytestmark = pytest.mark.cluster

FRAMES = 24
PER_SEGMENT = 4


def segment_states(client: redis.Redis, job_id: str) -> list[tuple[str, int, str]]:
    """Each segment's status, attempts and owner (host:pid:token while it runs)."""
    found = []
    for index in range(FRAMES // PER_SEGMENT):
        key = f"bgsvc:jobs:job:{segment_id(job_id, index)}"
        status, attempts, owner = client.hmget(key, ["status", "attempts", "owner"])
        found.append(
            (
                (status or b"").decode(),
                int(attempts or 0),
                (owner or b"").decode(),
            )
        )
    return found


def _frozen_running_a_segment(
    cluster: Cluster, probe: redis.Redis, job_id: str
) -> tuple[Node, set[int]]:
    """A node that runs a segment, stopped (SIGSTOP) with it, and the segments it holds.
    Frozen before they are read: a segment read as running could otherwise end between
    that read and the kill, which would then orphan nothing."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [o for s, _, o in segment_states(probe, job_id) if s == "running" and o]
        if running:
            pid = int(running[0].split(":")[1])
            node = next(n for n in cluster.nodes if os.getpgid(pid) == n.pid)
            os.killpg(node.pid, signal.SIGSTOP)
            pids = {node.pid, *children(node.pid)}
            held = {
                i
                for i, (s, _, o) in enumerate(segment_states(probe, job_id))
                if s == "running" and o and int(o.split(":")[1]) in pids
            }
            if held:
                return node, held
            os.killpg(node.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("no node was caught running a segment")


def test_kill_9_of_a_node_running_a_segment_loses_none_and_finishes_each_once(
    make_cluster: Callable[..., Cluster], cluster_models: dict[str, Path]
) -> None:
    # The slow model makes a frame ~0.5 s: a segment of 4 frames runs ~2 s.
    size = (SLOW["size"], SLOW["size"] * 3 // 4)
    cluster = make_cluster(
        nodes=3,
        redis=True,
        **model_env(cluster_models, "slow"),
        BGSVC_JOB_REDELIVER_S="4",
        BGSVC_VIDEO_SEGMENT_PIXELS=str(size[0] * size[1] * PER_SEGMENT),
    )
    assert cluster.redis is not None
    probe = redis.Redis.from_url(cluster.redis.url)
    files = {"file": ("clip.mp4", clip("mp4", size=size, frames=FRAMES), "video/mp4")}
    started = time.monotonic()
    submitted = httpx.post(f"{cluster.url}/jobs", files=files, timeout=60)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()

    def one_done_and_one_running() -> bool:
        states = segment_states(probe, job["id"])
        return any(s == "succeeded" for s, _, _ in states) and any(
            s == "running" and owner for s, _, owner in states
        )

    wait_for(one_done_and_one_running, 120, "a segment done and one running")
    victim, orphans = _frozen_running_a_segment(cluster, probe, job["id"])
    victim.kill()
    victim.wait(timeout=10)
    killed_at = time.monotonic()
    assert orphans

    def finished() -> bool:
        try:
            body = httpx.get(f"{cluster.url}/jobs/{job['id']}", timeout=10).json()
        except httpx.HTTPError:
            return False
        return body.get("status") in ("succeeded", "failed")

    wait_for(finished, 180, "the video job to end")
    body = httpx.get(f"{cluster.url}/jobs/{job['id']}", timeout=10).json()
    assert body["status"] == "succeeded", body
    assert body["frames_done"] == body["frames_total"] == FRAMES
    result = httpx.get(f"{cluster.url}{body['result_url']}", timeout=30)
    frames, _ = decode(result.content, alpha=True)
    assert len(frames) == FRAMES
    final = segment_states(probe, job["id"])
    # Every segment finished once; only the killed node's ran a second time.
    assert [s for s, _, _ in final] == ["succeeded"] * len(final)
    assert [a for _, a, _ in final] == [2 if i in orphans else 1 for i in range(len(final))]
    # What is left in the store is the video's result: no segment's frames. They and the
    # upload go just after the video is recorded succeeded, not with it.
    folder = Path(str(cluster.config.data_dir)) / "results" / "jobs" / job["id"]
    assert settled(folder, ["result.webm"], timeout=30) == ["result.webm"]
    record(
        "video_segments_kill_9",
        {
            "frames": FRAMES,
            "segments": len(final),
            "killed": victim.name,
            "orphaned_segments": len(orphans),
            "video_done_after_kill_s": round(time.monotonic() - killed_at, 1),
            "video_total_s": round(time.monotonic() - started, 1),
        },
    )
