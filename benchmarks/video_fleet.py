"""A video job on a fleet of 1 and of N nodes, and what more machines would give.

    .venv/bin/python -m benchmarks.video_fleet [--seconds 10] [--size 1280x720]
        [--nodes 1,3]

For each node count: `bgsvc cluster up` (its own redis-server, one worker a node, the
default model and settings), then one video job through nginx: the clip is
benchmarks.video's (scikit-image's cat panned 4 px a frame, 24 frames/s), as a webm with
alpha. Timed from submission to the job's end. Each segment's start and end are read
from the fleet's Redis (the segments are jobs of their own there).

All nodes of one machine share its cores, so on this machine more nodes cannot be
faster; what they show is the split and the stitch. The fleet model below takes the
1-node run's measured parts (the cut, each segment alone, the stitch) and lays the
segments out on N machines, each running one segment at a time: the longest machine's
sum, plus the cut and the stitch. Writes benchmarks/raw/<date>-video-fleet.json.
"""

from __future__ import annotations

import argparse
import heapq
import json
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from benchmarks.nodes import ClusterProc, free_port
from benchmarks.video import clip
from benchmarks.video_vs_images import post
from bgsvc.jobs.model import segment_id


def submit(base: str, data: bytes) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(post(base, "/jobs", data, "video/mp4", "format=webm"))
    return found


def wait_job(base: str, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/jobs/{job_id}", timeout=30) as response:
            body: dict[str, Any] = json.loads(response.read())
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not end in {timeout:g} s")


def segment_times(url: str, job_id: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    found = []
    index = 0
    while True:
        fields = client.hgetall(f"bgsvc:jobs:job:{segment_id(job_id, index)}")
        if not fields:
            return found
        started = float(fields[b"started_at"])
        finished = float(fields[b"finished_at"])
        found.append(
            {
                "index": index,
                "frames": int(fields.get(b"frames_done") or 0),
                "attempts": int(fields[b"attempts"]),
                "started_at": started,
                "seconds": round(finished - started, 2),
            }
        )
        index += 1


def run(nodes: int, data: bytes, run_dir: Path, timeout: float) -> dict[str, Any]:
    port = free_port()
    cluster = ClusterProc(nodes, 1, 0, {}, run_dir, redis_port=port)
    try:
        cluster.wait_ready()
        base = f"http://{cluster.target.host}:{cluster.target.port}"
        submitted_at = time.time()
        started = time.monotonic()
        job = submit(base, data)
        done = wait_job(base, job["id"], timeout)
        took = time.monotonic() - started
        segments = segment_times(f"redis://127.0.0.1:{port}/0", job["id"])
    finally:
        cluster.stop()
    assert done["status"] == "succeeded", done
    result: dict[str, Any] = {
        "nodes": nodes,
        "frames": done["frames_done"],
        "seconds": round(took, 1),
        "frames_per_s": round(done["frames_done"] / took, 2),
        "segments": segments,
    }
    if segments:
        first = min(s["started_at"] for s in segments)
        last = max(s["started_at"] + s["seconds"] for s in segments)
        result["cut_s"] = round(first - submitted_at, 2)
        result["segments_span_s"] = round(last - first, 2)
        result["stitch_s"] = round(submitted_at + took - last, 2)
    return result


def fleet_model(one: dict[str, Any], counts: list[int]) -> list[dict[str, Any]]:
    """The 1-node run's parts laid out on N machines (longest segment first)."""
    durations = sorted((s["seconds"] for s in one["segments"]), reverse=True)
    fixed = one["cut_s"] + one["stitch_s"]
    rows = []
    for n in counts:
        machines = [0.0] * n
        for seconds in durations:
            heapq.heapreplace(machines, machines[0] + seconds)
        total = fixed + max(machines)
        rows.append(
            {
                "machines": n,
                "seconds": round(total, 1),
                "speed_up": round((fixed + sum(durations)) / total, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--nodes", default="1,3")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--run-dir", help="keep the fleets' logs here (default: temporary)")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    data = clip(round(args.seconds * 24), (w, h))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.run_dir or tmp)
        for count in (int(n) for n in args.nodes.split(",")):
            runs.append(run(count, data, base / f"fleet-{count}", args.timeout))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "segments"}))
    report = {"clip": {"seconds": args.seconds, "size": [w, h]}, "runs": runs}
    one = next((r for r in runs if r["nodes"] == 1 and r["segments"]), None)
    if one is not None:
        report["fleet_model"] = fleet_model(one, [1, 2, 3, 4, 8])
        print(json.dumps(report["fleet_model"]))
    out = Path("benchmarks/raw") / f"{datetime.now(UTC):%Y-%m-%d}-video-fleet.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
