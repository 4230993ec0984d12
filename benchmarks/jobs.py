"""Jobs against the sync path on one node (issue 10's bench row): the same 2 MP JPEGs as a
batch through the embedded queue and as sync requests at the same concurrency, result cache
off; then the enqueue-to-start latency of single jobs sent to an idle node.

    python -m benchmarks.jobs [--items 40] [--idle 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.images import QUICK_SET, build_set, two_megapixel
from benchmarks.load import Target, closed_loop
from benchmarks.nodes import Node
from benchmarks.plan import HERE, cores, say
from benchmarks.service import node_env, warm
from benchmarks.stats import percentile


def _request(
    target: Target, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(target.host, target.port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, json.loads(data) if data else {}


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "bgsvc-bench-boundary"
    parts = []
    for name, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        parts.append(head + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _wait_job(target: Target, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _, body = _request(target, "GET", f"/jobs/{job_id}")
        if body["status"] in ("succeeded", "failed", "canceled", "expired"):
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {body['status']} after {timeout:.0f}s")
        time.sleep(0.05)


def batch_vs_sync(target: Target, photo: bytes, items: int, concurrency: int) -> dict[str, Any]:
    """Throughput of ``items`` photos as one batch, then as sync requests."""
    body, boundary = _multipart([(f"{i}.jpg", photo) for i in range(items)])
    started = time.monotonic()
    status, batch = _request(
        target,
        "POST",
        "/batches?format=png",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    if status != 202:
        raise RuntimeError(f"POST /batches answered {status}: {batch}")
    while True:
        _, state = _request(target, "GET", batch["status_url"])
        if state["status"] == "completed":
            break
        time.sleep(0.2)
    batch_s = time.monotonic() - started
    succeeded = state["counts"]["succeeded"]

    started = time.monotonic()
    samples = closed_loop([target], [photo], concurrency, items)
    sync_s = time.monotonic() - started
    ok = sum(1 for s in samples if s.status == 200)
    return {
        "items": items,
        "batch_succeeded": succeeded,
        "batch_s": batch_s,
        "batch_img_s": succeeded / batch_s,
        "sync_ok": ok,
        "sync_concurrency": concurrency,
        "sync_s": sync_s,
        "sync_img_s": ok / sync_s,
        "ratio": (succeeded / batch_s) / (ok / sync_s),
    }


def idle_latency(target: Target, photo: bytes, jobs: int) -> dict[str, Any]:
    """Enqueue-to-start of single jobs, each sent once the node is idle again."""
    waits = []
    for _ in range(jobs):
        status, job = _request(
            target, "POST", "/jobs?format=png", photo, {"Content-Type": "image/jpeg"}
        )
        if status != 202:
            raise RuntimeError(f"POST /jobs answered {status}: {job}")
        done = _wait_job(target, job["id"])
        waits.append(_seconds(done["started_at"]) - _seconds(done["created_at"]))
    return {
        "jobs": jobs,
        "p50_ms": percentile(waits, 50) * 1000,
        "p95_ms": percentile(waits, 95) * 1000,
        "max_ms": max(waits) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--idle", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    n = cores()
    photo = two_megapixel(build_set(QUICK_SET, args.out / "images")).data
    with tempfile.TemporaryDirectory(prefix="bgsvc-jobs-bench-") as data_dir:
        env = node_env(n, BGSVC_DATA_DIR=data_dir, BGSVC_JOB_QUEUE_LIMIT=str(max(100, args.items)))
        node = Node(env, args.out / "logs" / "node-jobs.log")
        try:
            node.wait_ready()
            warm([node.target], photo)
            say(f"jobs: {args.items} photos as a batch, then as sync requests")
            results: dict[str, Any] = {
                "throughput": batch_vs_sync(node.target, photo, args.items, 2)
            }
            say(f"jobs: {results['throughput']}")
            results["idle_latency"] = idle_latency(node.target, photo, args.idle)
            say(f"jobs: enqueue-to-start on an idle node {results['idle_latency']}")
        finally:
            node.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jobs.json").write_text(json.dumps(results, indent=2))
    say(f"wrote {args.out / 'jobs.json'}")


if __name__ == "__main__":
    main()
