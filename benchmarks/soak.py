"""Memory over a long run: the RSS of each gunicorn worker of one node (deploy/start.sh,
two workers) sampled every ``step`` requests over many thousands of requests, each one
decoding, resizing, compositing and encoding a 2 MP photo.

The model is a cheap generated graph with the real model's input and output (as in the
short ``memory`` section): the forward pass is nearly free, so the service's own code,
where a leak would be, runs ~20,000 times in minutes instead of the hours the real forward
would need. The result cache is off, so every request runs the whole pipeline. Output
alternates PNG and JPEG; WebP (lossless alpha) costs ~0.3 s per 2 MP request here, which
would stretch 20,000 requests to well over an hour: the short ``memory`` section covers it.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.load import Target, closed_loop
from benchmarks.nodes import free_port, rss_kib
from benchmarks.stats import slope

CLIENTS = 4
READY_TIMEOUT_S = 300.0


def worker_pids(arbiter: int) -> list[int]:
    """Children of ``arbiter`` (gunicorn's workers), from /proc; [] when unreadable."""
    pids: list[int] = []
    for children in Path(f"/proc/{arbiter}/task").glob("*/children"):
        try:
            pids += [int(p) for p in children.read_text().split()]
        except OSError:
            continue
    return sorted(set(pids))


def fifth_medians(points: list[tuple[int, int]], total: int) -> tuple[float, float]:
    """Median RSS (MiB) of the samples in the first and in the last fifth of the run."""
    first = [kib for n, kib in points if n <= total / 5]
    last = [kib for n, kib in points if n >= total * 4 / 5]
    return (
        statistics.median(first) / 1024 if first else math.nan,
        statistics.median(last) / 1024 if last else math.nan,
    )


def per_worker(series: dict[int, list[tuple[int, int]]], total: int) -> list[dict[str, Any]]:
    """First/last-fifth medians and the slope after the first fifth (start-up growth,
    arenas and pools reaching their size, is not a leak), per worker."""
    rows = []
    for pid, points in sorted(series.items()):
        first, last = fifth_medians(points, total)
        settled = [p for p in points if p[0] >= total / 5]
        per_req = slope([n for n, _ in settled], [k for _, k in settled])
        # One allocator step (a new arena or a larger free-list high-water mark) moves a
        # least-squares slope as much as a leak would; a leak keeps climbing in the second
        # half too, a step does not.
        late = [p for p in points if p[0] >= total / 2]
        late_per_req = slope([n for n, _ in late], [k for _, k in late])
        rows.append(
            {
                "pid": pid,
                "samples": len(points),
                "rss_start_mib": points[0][1] / 1024,
                "rss_end_mib": points[-1][1] / 1024,
                "rss_max_mib": max(k for _, k in points) / 1024,
                "median_first_fifth_mib": first,
                "median_last_fifth_mib": last,
                "slope_kib_per_1000_requests": per_req * 1000,
                "slope_second_half_kib_per_1000_requests": late_per_req * 1000,
                "rss_kib": points,
            }
        )
    return rows


def soak_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-worker table of the report."""
    return {
        "headers": [
            "worker",
            "RSS at 0",
            "median 1st fifth MiB",
            "median last fifth MiB",
            "max MiB",
            "RSS at end",
            "slope KiB / 1,000 req",
            "2nd-half slope KiB / 1,000 req",
        ],
        "rows": [
            [
                f"pid {r['pid']}",
                r["rss_start_mib"],
                r["median_first_fifth_mib"],
                r["median_last_fifth_mib"],
                r["rss_max_mib"],
                r["rss_end_mib"],
                r["slope_kib_per_1000_requests"],
                r["slope_second_half_kib_per_1000_requests"],
            ]
            for r in rows
        ],
    }


def worker_memory(
    out_dir: Path,
    model: Path,
    model_size: int,
    body: bytes,
    requests: int,
    say: Callable[[str], None],
    step: int = 1000,
    workers: int = 2,
) -> dict[str, Any]:
    """``requests`` POSTs of ``body`` (a 2 MP JPEG) at one node with ``workers`` workers,
    PNG and JPEG output alternating per ``step``; RSS of each worker after each step."""
    from bgsvc.cluster import ClusterConfig, Node, NodeSpec, find_deploy_dir

    custom = {"soak": {"path": str(model), "profile": "imgly", "input_size": model_size}}
    config = ClusterConfig(
        nodes=[NodeSpec(free_port())],
        run_dir=out_dir / "soak",
        workers=workers,
        threads=1,
        env={
            "BGSVC_CUSTOM_MODELS": json.dumps(custom),
            "BGSVC_DEFAULT_MODEL": "soak",
            "BGSVC_RESULT_CACHE_BYTES": "0",
            "BGSVC_MAX_QUEUE": "8",
            "BGSVC_LOG_LEVEL": "warning",
            "BGSVC_UI_ENABLED": "false",
        },
    )
    node = Node(config.nodes[0], config, find_deploy_dir())
    target = Target(config.host, node.port)
    step = max(1, min(step, requests))
    series: dict[int, list[tuple[int, int]]] = {}
    statuses: dict[int, int] = {}
    replaced: list[str] = []
    node.start()
    started = time.perf_counter()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (node.ready() and len(worker_pids(node.pid)) == workers):
            if not node.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"soak node did not become ready; see {node.log_path}")
            time.sleep(0.2)
        # Both workers answer once before the first sample (lazy imports, first buffers).
        closed_loop([target], [body], CLIENTS, 4 * workers)
        pids = worker_pids(node.pid)
        arbiter_start = rss_kib(node.pid)
        for pid in pids:
            series[pid] = [(0, rss_kib(pid))]
        done = 0
        while done < requests:
            fmt = "png" if (done // step) % 2 == 0 else "jpg"
            count = min(step, requests - done)
            batch = closed_loop(
                [target], [body], CLIENTS, count, path=f"/remove-background?format={fmt}"
            )
            for s in batch:
                statuses[s.status] = statuses.get(s.status, 0) + 1
            done += count
            now = worker_pids(node.pid)
            if now != pids:
                replaced.append(f"after {done} requests: workers {pids} -> {now}")
                say(f"soak: worker set changed: {replaced[-1]}")
            for pid in now:
                series.setdefault(pid, []).append((done, rss_kib(pid)))
            pids = now
            elapsed = time.perf_counter() - started
            say(
                f"soak {done}/{requests} ({done / elapsed:.1f} req/s): RSS "
                + ", ".join(f"{pid}={series[pid][-1][1] / 1024:.0f} MiB" for pid in pids)
            )
        arbiter_end = rss_kib(node.pid)
    finally:
        node.terminate()
        if node.wait(60) is None:
            node.kill()
        node.close()
    elapsed = time.perf_counter() - started
    rows = per_worker(series, requests)
    failed = sum(v for k, v in statuses.items() if k != 200)
    result: dict[str, Any] = {
        "requests": requests,
        "step": step,
        "workers": workers,
        "clients": CLIENTS,
        "image_bytes": len(body),
        "model_input": model_size,
        "seconds": elapsed,
        "requests_per_s": requests / elapsed if elapsed else math.nan,
        "statuses": statuses,
        "failed": failed,
        "workers_replaced": replaced,
        "arbiter_rss_mib": [arbiter_start / 1024, arbiter_end / 1024],
        "per_worker": rows,
    }
    result["table"] = soak_table(rows)
    result["note"] = (
        f"{requests} requests of one 2 MP JPEG ({len(body) // 1024} KiB; PNG and JPEG "
        f"output alternating every {step}) at {CLIENTS} clients to one node "
        f"(deploy/start.sh, {workers} workers x 1 thread, result cache off, model a "
        f"cheap graph with a {model_size}x{model_size} input) in {elapsed:.0f} s "
        f"({result['requests_per_s']:.1f} req/s); RSS of each worker every {step} "
        f"requests; slopes after the first fifth and over the second half. Statuses: "
        f"{statuses}. Arbiter RSS "
        f"{arbiter_start / 1024:.0f} -> {arbiter_end / 1024:.0f} MiB."
        + (f" Workers replaced: {replaced}." if replaced else " No worker was replaced.")
    )
    say(result["note"])
    return result
