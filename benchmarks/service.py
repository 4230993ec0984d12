"""The service measured over HTTP: the load levels, latency by image size, overload
against the queue bound, and the result cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.images import BenchImage
from benchmarks.load import Target, closed_loop, open_loop
from benchmarks.nodes import Node
from benchmarks.plan import CONCURRENCY, Plan, cores, say
from benchmarks.stats import LoadSummary, percentile, summarise


def node_env(threads: int, **extra: str) -> dict[str, str]:
    env = {
        "BGSVC_INTRA_OP_THREADS": str(threads),
        # Every load level admitted: the curve shows queueing, not the 429 policy
        # (the overload scenario measures that with the default queue bound).
        "BGSVC_MAX_QUEUE": "8",
        # Duplicate uploads would be served from a cache and flatter the numbers: the
        # local level and, on a fleet with Redis, the shared one are both off.
        "BGSVC_RESULT_CACHE_BYTES": "0",
        "BGSVC_SHARED_CACHE": "false",
    }
    env.update(extra)
    return env


def warm(targets: list[Target], body: bytes) -> None:
    # The first requests pay one-off costs (lazy imports, thread pools, first allocations).
    closed_loop(targets, [body], len(targets), 2 * len(targets))


class ImplausibleRow(RuntimeError):
    """A load row faster than the bare limit: something other than the model answered."""


def run_levels(
    label: str,
    targets: list[Target],
    images: list[BenchImage],
    plan: Plan,
    limit: float | None = None,
) -> list[LoadSummary]:
    """The closed-loop levels on distinct uploads; a row faster than ``limit`` (the bare
    forward pass's images/s on this machine, plus 5 % for noise) is refused."""
    bodies = list({im.digest: im.data for im in images}.values())
    levels = []
    for c in CONCURRENCY:
        samples = closed_loop(targets, bodies, c, plan.requests[c])
        summary = summarise(label, c, samples)
        if limit is not None and summary.throughput > 1.05 * limit:
            raise ImplausibleRow(
                f"{label} c={c}: {summary.throughput:.2f} img/s is faster than the bare "
                f"limit ({limit:.2f} img/s): a cache or a duplicate answered; not recorded"
            )
        levels.append(summary)
        say(
            f"{label} c={c}: {summary.throughput:.3f} img/s, p50 {summary.p50:.2f}s, "
            f"p99 {summary.p99:.2f}s, ok {summary.ok}, 429 {summary.rejected}, "
            f"errors {summary.errors}"
        )
    return levels


def by_size(target: Target, images: list[BenchImage]) -> dict[str, Any]:
    """c=1 latency per image size with its stage breakdown (one request each, after one
    unmeasured pass so every size is warm)."""
    rows = []
    unique = {im.digest: im for im in images}.values()
    for image in sorted(unique, key=lambda im: im.megapixels):
        closed_loop([target], [image.data], 1, 1)
        samples = closed_loop([target], [image.data], 1, 2)
        ok = [s for s in samples if s.status == 200]
        if not ok:
            continue
        best = min(ok, key=lambda s: s.latency)
        stages = best.stages
        rows.append(
            [
                f"{image.name} {image.width}x{image.height}",
                image.width * image.height / 1e6,
                len(image.data) / 1024,
                best.latency,
                *(stages.get(k, math.nan) * 1000 for k in STAGES),
            ]
        )
    headers = ["image", "MP", "KiB", "latency s", *(f"{k} ms" for k in STAGES)]
    return {"table": {"headers": headers, "rows": rows}}


STAGES = ("decode", "preprocess", "queue", "inference", "mask", "postprocess", "encode")


def overload(
    plan: Plan, image: BenchImage, sustainable: float, c1_p50: float, out: Path
) -> dict[str, Any]:
    """4x the sustainable rate at a node with the default queue bound: accepted requests
    should keep a bounded latency and the rest get fast 429s."""
    from bgsvc.config import Settings

    queue = Settings().max_queue
    node = Node(
        {"BGSVC_INTRA_OP_THREADS": str(cores()), "BGSVC_RESULT_CACHE_BYTES": "0"},
        out / "logs" / "overload.log",
    )
    try:
        node.wait_ready()
        warm([node.target], image.data)
        rate = 4 * sustainable
        say(f"overload: {rate:.2f} req/s for {plan.overload_seconds:.0f}s (queue bound {queue})")
        samples = open_loop(node.target, image.data, rate, plan.overload_seconds)
    finally:
        node.stop()
    ok = [s for s in samples if s.status == 200]
    rejected = [s for s in samples if s.status == 429]
    other = [s for s in samples if s.status not in (200, 429)]
    bound = (queue + 1) * c1_p50
    ok_p99 = percentile([s.latency for s in ok], 99)
    result = {
        "rate_req_s": rate,
        "sent": len(samples),
        "accepted": len(ok),
        "rejected_429": len(rejected),
        "other_errors": len(other),
        "accepted_p50": percentile([s.latency for s in ok], 50),
        "accepted_p99": ok_p99,
        "rejected_p50_ms": percentile([s.latency for s in rejected], 50) * 1000,
        "rejected_p99_ms": percentile([s.latency for s in rejected], 99) * 1000,
        "latency_bound_s": bound,
        "accepted_throughput": len(ok) / plan.overload_seconds,
    }
    result["table"] = {
        "headers": ["measure", "value"],
        "rows": [[k, v] for k, v in result.items() if k != "table"],
    }
    result["note"] = (
        f"Bound = (max_queue + 1) x c=1 p50 = {bound:.2f} s; accepted p99 "
        f"{ok_p99:.2f} s; {len(other)} responses other than 200/429."
    )
    say(result["note"])
    return result


def cache_check(image: BenchImage, out: Path) -> dict[str, Any]:
    """The same upload twice at a node with the result cache on: MISS, then HIT."""
    node = Node({"BGSVC_INTRA_OP_THREADS": str(cores())}, out / "logs" / "cache.log")
    try:
        node.wait_ready()
        samples = closed_loop([node.target], [image.data], 1, 3)
    finally:
        node.stop()
    rows = [[i + 1, s.cache or "-", s.status, s.latency * 1000] for i, s in enumerate(samples)]
    return {
        "samples": [s.__dict__ for s in samples],
        "table": {"headers": ["request", "X-Cache", "status", "latency ms"], "rows": rows},
    }
