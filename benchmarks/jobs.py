"""Jobs against the sync path on one node (the benchmarks' jobs row): N 2 MP JPEGs as one batch
through the queue and N as sync requests at the same concurrency, then the enqueue-to-start
latency of single jobs sent to an idle node. Run by `make bench` (part `jobs`) or alone:

    python -m benchmarks.jobs [--items 200] [--idle 50] [--redis] [--out DIR]

With --redis the node gets a throwaway redis-server on loopback as BGSVC_REDIS_URL, so the
row is measured in whatever mode that selects; the result says which mode was seen.
Every upload is unique (a JPEG comment with a counter): with Redis set, the shared result
cache is on and would otherwise serve repeats without running the model.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.images import QUICK_SET, build_set, two_megapixel
from benchmarks.load import Target, closed_loop
from benchmarks.nodes import Node
from benchmarks.plan import HERE, cores, say
from benchmarks.service import node_env
from benchmarks.stats import percentile

# The prefix of the shared result cache's keys (bgsvc.cache.redis.RedisLevel): any other
# key in the bench's own Redis was written by the jobs.
CACHE_PREFIX = b"bgsvc:cache:"
SYNC_CONCURRENCY = 2
REDIS_FALLBACK_MODE = "embedded (BGSVC_REDIS_URL set; no job keys in Redis)"
ROW_HEADERS = (
    "mode",
    "images",
    "batch img/s",
    "sync img/s (c=2)",
    "batch / sync",
    "idle jobs",
    "enqueue-to-start p50 ms",
    "p95 ms",
)


def unique_jpegs(photo: bytes, count: int, tag: str) -> list[bytes]:
    """``count`` copies of ``photo`` that decode to the same pixels but differ in bytes:
    a COM segment right after SOI carries ``tag`` and the copy's number."""
    if photo[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    copies = []
    for i in range(count):
        text = f"bgsvc-bench {tag} {i}".encode()
        segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
        copies.append(photo[:2] + segment + photo[2:])
    return copies


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


def _wait_job(
    target: Target, job_id: str, timeout: float = 300.0, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _, body = _request(target, "GET", f"/jobs/{job_id}", headers=headers)
        if body["status"] in ("succeeded", "failed", "canceled", "expired"):
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {body['status']} after {timeout:.0f}s")
        time.sleep(0.05)


def _batch(target: Target, photos: list[bytes]) -> tuple[str, float]:
    """POST /batches of ``photos``: its status URL and when it was sent."""
    body, boundary = _multipart([(f"{i}.jpg", p) for i, p in enumerate(photos)])
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
    return str(batch["status_url"]), started


def _until_completed(target: Target, status_url: str, started: float) -> tuple[int, float]:
    while True:
        _, state = _request(target, "GET", status_url)
        if state["status"] == "completed":
            return int(state["counts"]["succeeded"]), time.monotonic() - started
        time.sleep(0.2)


def _sync(target: Target, photos: list[bytes]) -> tuple[int, float]:
    started = time.monotonic()
    samples = closed_loop([target], photos, SYNC_CONCURRENCY, len(photos))
    return sum(1 for s in samples if s.status == 200), time.monotonic() - started


def batch_vs_sync(
    target: Target,
    batch_photos: list[bytes],
    sync_photos: list[bytes],
    redis_keys: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Throughput of ``batch_photos`` as batches and of ``sync_photos`` as sync requests
    at c=2, in the order batch, sync, sync, batch (half of each per run), so a machine
    whose load drifts during the run weighs on both paths alike. ``redis_keys`` counts
    the job keys in Redis while the first batch is queued."""
    half = max(1, len(batch_photos) // 2)
    batches = [batch_photos[:half], batch_photos[half:]]
    syncs = [sync_photos[: len(sync_photos) // 2], sync_photos[len(sync_photos) // 2 :]]
    succeeded = ok = 0
    batch_s = sync_s = 0.0
    job_keys = None
    phases: list[list[Any]] = []
    for order, photos in enumerate((batches[0], syncs[0], syncs[1], batches[1])):
        if not photos:
            continue
        if order in (1, 2):
            done, seconds = _sync(target, photos)
            ok, sync_s = ok + done, sync_s + seconds
            phases.append(["sync", done, seconds])
            continue
        status_url, started = _batch(target, photos)
        if job_keys is None and redis_keys is not None:
            job_keys = redis_keys()
        done, seconds = _until_completed(target, status_url, started)
        succeeded, batch_s = succeeded + done, batch_s + seconds
        phases.append(["batch", done, seconds])
    result = {
        "items": len(batch_photos),
        "batches": sum(1 for b in batches if b),
        "batch_succeeded": succeeded,
        "batch_s": batch_s,
        "batch_img_s": succeeded / batch_s,
        "sync_ok": ok,
        "sync_concurrency": SYNC_CONCURRENCY,
        "sync_s": sync_s,
        "sync_img_s": ok / sync_s,
        "ratio": (succeeded / batch_s) / (ok / sync_s) if ok else float("nan"),
        # In run order, to see load drift on a shared machine: [path, images, seconds].
        "phases": phases,
    }
    if job_keys is not None:
        result["redis_job_keys_while_queued"] = job_keys
    return result


def idle_latency(target: Target, photos: list[bytes]) -> dict[str, Any]:
    """Enqueue-to-start (``started_at - created_at``) of single jobs, each sent once the
    node is idle again."""
    waits = []
    for photo in photos:
        status, job = _request(
            target, "POST", "/jobs?format=png", photo, {"Content-Type": "image/jpeg"}
        )
        if status != 202:
            raise RuntimeError(f"POST /jobs answered {status}: {job}")
        done = _wait_job(target, job["id"])
        if done["status"] != "succeeded":
            raise RuntimeError(f"idle job {job['id']} ended {done['status']}: {done['error']}")
        waits.append(_seconds(done["started_at"]) - _seconds(done["created_at"]))
    return {
        "jobs": len(photos),
        "p50_ms": percentile(waits, 50) * 1000,
        "p95_ms": percentile(waits, 95) * 1000,
        "max_ms": max(waits) * 1000,
    }


@contextlib.contextmanager
def _redis(workdir: Path) -> Iterator[Any]:
    # The tests' throwaway server (no persistence, free loopback port) serves here too.
    from tests.redis_server import RedisServer

    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _job_key_counter(server: Any) -> Callable[[], int]:
    def count() -> int:
        with server.client() as client:
            return sum(1 for k in client.scan_iter(count=1000) if not k.startswith(CACHE_PREFIX))

    return count


def measure(
    photo: bytes,
    items: int,
    idle: int,
    out: Path,
    *,
    redis: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """One node (with its own Redis when ``redis``): batch vs sync over ``items`` unique
    copies of ``photo`` each, then ``idle`` single jobs on the idle node."""
    variant = "redis" if redis else "embedded"
    n = threads or cores()
    with tempfile.TemporaryDirectory(prefix="bgsvc-jobs-bench-") as tmp:
        root = Path(tmp)
        env: dict[str, str] = node_env(
            n,
            BGSVC_DATA_DIR=str(root / "data"),
            BGSVC_JOB_QUEUE_LIMIT=str(max(100, items)),
            BGSVC_BATCH_MAX_ITEMS=str(max(100, items)),
            # Room for the multipart framing on top of the images themselves.
            BGSVC_BATCH_MAX_BYTES=str(max(200 * 2**20, 2 * items * len(photo))),
        )
        with contextlib.ExitStack() as stack:
            counter: Callable[[], int] | None = None
            if redis:
                (root / "redis").mkdir()
                server = stack.enter_context(_redis(root / "redis"))
                env["BGSVC_REDIS_URL"] = server.url
                counter = _job_key_counter(server)
            result = _run_node(env, photo, items, idle, out, variant, counter)
    result["variant"] = variant
    keys = result["throughput"].get("redis_job_keys_while_queued")
    if not redis:
        result["mode"] = "embedded"
    elif keys:
        result["mode"] = "redis"
    else:
        # The flag was set but nothing but cache keys reached Redis: the node ran its jobs
        # in embedded mode (a checkout without the Redis job store).
        result["mode"] = REDIS_FALLBACK_MODE
    return result


def _run_node(
    env: Mapping[str, str],
    photo: bytes,
    items: int,
    idle: int,
    out: Path,
    variant: str,
    counter: Callable[[], int] | None,
) -> dict[str, Any]:
    node = Node(env, out / "logs" / f"node-jobs-{variant}.log")
    try:
        node.wait_ready()
        closed_loop([node.target], unique_jpegs(photo, 2, f"{variant}-warm"), 1, 2)
        say(f"jobs ({variant}): {items} photos as batches and as sync requests at c=2")
        throughput = batch_vs_sync(
            node.target,
            unique_jpegs(photo, items, f"{variant}-batch"),
            unique_jpegs(photo, items, f"{variant}-sync"),
            counter,
        )
        say(f"jobs ({variant}): {throughput}")
        latency = idle_latency(node.target, unique_jpegs(photo, idle, f"{variant}-idle"))
        say(f"jobs ({variant}): enqueue-to-start on an idle node {latency}")
    finally:
        node.stop()
    return {"throughput": throughput, "idle_latency": latency}


def row(result: dict[str, Any]) -> list[Any]:
    """The summary table's row of one variant (ROW_HEADERS)."""
    tp, lat = result["throughput"], result["idle_latency"]
    return [
        result["mode"],
        tp["items"],
        tp["batch_img_s"],
        tp["sync_img_s"],
        tp["ratio"],
        lat["jobs"],
        lat["p50_ms"],
        lat["p95_ms"],
    ]


def section(variants: list[dict[str, Any]], skipped: list[str]) -> dict[str, Any]:
    """The report's ``jobs`` section: the variants, their table and a note."""
    note = (
        "One node, result cache off, every upload unique. Batch: POST /batches until "
        "completed; sync: the same number of /remove-background requests at c=2; half of "
        "each in the order batch, sync, sync, batch. Target: "
        "batch / sync >= 0.9. Enqueue-to-start: single jobs, each sent to an idle node."
    )
    if skipped:
        note += " Skipped: " + "; ".join(skipped) + "."
    return {
        "variants": variants,
        "table": {"headers": list(ROW_HEADERS), "rows": [row(v) for v in variants]},
        "note": note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--redis", action="store_true", help="node with its own Redis")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    photo = two_megapixel(build_set(QUICK_SET, args.out / "images")).data
    result = measure(photo, args.items, args.idle, args.out, redis=args.redis)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jobs.json").write_text(json.dumps(result, indent=2))
    say(f"wrote {args.out / 'jobs.json'}")


if __name__ == "__main__":
    main()
