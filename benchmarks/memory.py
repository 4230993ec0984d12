"""Memory: one worker's RSS over many requests (default malloc and a fixed arena count),
and each gunicorn worker's over a long run (benchmarks.soak)."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.images import BenchImage, two_megapixel
from benchmarks.load import closed_loop
from benchmarks.nodes import Node, rss_kib
from benchmarks.plan import Plan, cores, say
from benchmarks.soak import worker_memory
from benchmarks.stats import slope


def cheap_model(out_dir: Path, size: int) -> Path:
    """A tiny real ONNX graph with the default model's input and output shapes at
    ``size``: sigmoid(8 * channel mean). The soak then spends its time in the service's
    own code (HTTP, decode, resize, compositing, encode, cache), where a leak would be,
    and 1,000 requests take minutes instead of the ~20 the real forward would need. (A
    dynamic-shape copy of the real model does not work: ISNet's export has fixed Resize
    sizes.)"""
    from tests.models import build_tiny_model

    target = out_dir / f"soak-{size}.onnx"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    return build_tiny_model(target, size)


def memory(
    plan: Plan, images: list[BenchImage], out: Path, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    size = 1024
    model = cheap_model(out / "prepared", size)
    custom = {"soak": {"path": str(model), "profile": "imgly", "input_size": size}}
    node = Node(
        {
            "BGSVC_INTRA_OP_THREADS": str(cores()),
            "BGSVC_CUSTOM_MODELS": json.dumps(custom),
            "BGSVC_DEFAULT_MODEL": "soak",
            # On, with a small budget: its memory must stay bounded too.
            "BGSVC_RESULT_CACHE_BYTES": str(8 * 1024 * 1024),
            "BGSVC_WARMUP": "true",
            "BGSVC_MAX_QUEUE": "8",
            **(extra_env or {}),
        },
        out / "logs" / "memory.log",
    )
    # Every image once per cycle, duplicates included: the cache gets hits and evictions.
    bodies = [im.data for im in images]
    step = max(10, plan.memory_requests // 20)
    points: list[tuple[int, int]] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    try:
        node.wait_ready()
        points.append((0, rss_kib(node.pid)))
        done = 0
        while done < plan.memory_requests:
            # Alternate the output format so both encoders and both paths are exercised.
            fmt = "png" if (done // step) % 2 == 0 else "webp"
            batch = closed_loop(
                [node.target], bodies[done % len(bodies):] + bodies, 2, step,
                path=f"/remove-background?format={fmt}",
            )  # fmt: skip
            for s in batch:
                statuses[s.status] = statuses.get(s.status, 0) + 1
            done += step
            points.append((done, rss_kib(node.pid)))
    finally:
        node.stop()
    elapsed = time.perf_counter() - started
    # The slope after the first fifth: start-up growth (arenas, caches filling) is not a leak.
    settled = [p for p in points if p[0] >= plan.memory_requests // 5]
    kib_per_req = slope([p[0] for p in settled], [p[1] for p in settled])

    # Allocator high-water spikes move a least-squares slope; medians of the second and the
    # last fifth of the run say whether the baseline itself creeps.
    def fifth_median(lo: float, hi: float) -> float:
        chunk = [kib for n, kib in points if lo * total <= n <= hi * total]
        return statistics.median(chunk) / 1024 if chunk else math.nan

    total = plan.memory_requests
    early, late = fifth_median(0.2, 0.4), fifth_median(0.8, 1.0)
    result = {
        "rss_median_mib_2nd_fifth": early,
        "rss_median_mib_last_fifth": late,
        "model_input": size,
        "requests": plan.memory_requests,
        "seconds": elapsed,
        "statuses": statuses,
        "rss_kib": points,
        "rss_start_mib": points[0][1] / 1024,
        "rss_end_mib": points[-1][1] / 1024,
        "slope_kib_per_100_requests": kib_per_req * 100,
    }
    result["table"] = {
        "headers": ["requests", "RSS MiB"],
        "rows": [[n, kib / 1024] for n, kib in points[:: max(1, len(points) // 10)]],
    }
    label = " ".join(f"{k}={v}" for k, v in (extra_env or {}).items()) or "default malloc"
    result["env"] = label
    result["note"] = (
        f"[{label}] {plan.memory_requests} requests (all bench images, PNG and WebP "
        "alternating, c=2) to "
        f"one worker whose model is a tiny graph with the real model's {size}x{size} input "
        f"and output (the service's own code at full size, the forward nearly free), in "
        f"{elapsed:.0f} s. RSS slope "
        f"after the first fifth: {kib_per_req * 100:.1f} KiB per 100 requests; RSS "
        f"{points[0][1] / 1024:.0f} -> {points[-1][1] / 1024:.0f} MiB; median RSS "
        f"{early:.0f} MiB in the second fifth, {late:.0f} MiB in the last. "
        f"Statuses: {statuses}."
    )
    say(result["note"])
    return result


def soak(plan: Plan, images: list[BenchImage], out: Path) -> dict[str, Any]:
    """RSS of each of two gunicorn workers over ``plan.soak_requests`` 2 MP requests."""
    size = 1024
    model = cheap_model(out / "prepared", size)
    body = two_megapixel(images).data
    return worker_memory(out, model, size, body, plan.soak_requests, say)
