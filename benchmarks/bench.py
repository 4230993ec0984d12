"""The benchmark: the model's own limit, the service at 1/2/4/8 concurrent clients, the
scheduling layouts, overload, the result cache, memory (short, and per worker over a long
run), the cluster when there is one, and a chaos run (kill -9 of nodes under load).

    python -m benchmarks.bench [--quick] [--out DIR] [--no-cluster] [--skip-memory]
        [--chaos-seconds S] [--chaos-interval S] [--soak-requests N]
        [--only memory,soak,chaos,cluster]

Writes DIR/results.json, DIR/results.md and DIR/bench.png (DIR: benchmarks/out).
Nothing here asserts a number: the run prints and records.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.chaos import chaos
from benchmarks.images import FULL_SET, QUICK_SET, BenchImage, build_set, two_megapixel
from benchmarks.load import Target, closed_loop, open_loop, process_throughput
from benchmarks.nodes import ClusterProc, Node, cluster_available, rss_kib
from benchmarks.soak import worker_memory
from benchmarks.stats import LoadSummary, percentile, ratio, slope, summarise

HERE = Path(__file__).resolve().parent
CONCURRENCY = (1, 2, 4, 8)
# Where this run writes (images, logs, prepared files); set from --out.
OUT = HERE / "out"


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does."""

    mode: str
    images: tuple[tuple[str, float], ...]
    limit_runs: int
    requests: dict[int, int]
    overload_seconds: float
    memory_requests: int
    layouts: tuple[str, ...]
    # Memory per worker over a long run (0: skipped).
    soak_requests: int = 0
    # Chaos run length and the time between kills (0 s: skipped).
    chaos_seconds: float = 0.0
    chaos_interval: float = 30.0


FULL = Plan(
    mode="full",
    images=FULL_SET,
    limit_runs=10,
    requests={1: 10, 2: 14, 4: 20, 8: 28},
    overload_seconds=40.0,
    memory_requests=1000,
    layouts=("1x2", "2x1"),
    soak_requests=20_000,
    chaos_seconds=300.0,
)
QUICK = Plan(
    mode="quick",
    images=QUICK_SET,
    limit_runs=3,
    requests={1: 4, 2: 4, 4: 6, 8: 8},
    overload_seconds=12.0,
    memory_requests=150,
    layouts=("1x2",),
    # A chaos run is only telling at length (several kills and recoveries of a node that
    # loads the real model): the quick run leaves it out unless --chaos-seconds asks.
    soak_requests=1000,
    chaos_seconds=0.0,
)
# Sections that run on their own with --only.
SECTIONS = ("memory", "soak", "chaos", "cluster")
# Four different 2 MP photographs for the chaos run's clients.
CHAOS_SET: tuple[tuple[str, float], ...] = (
    ("chelsea", 2.0),
    ("rocket", 2.0),
    ("astronaut", 2.0),
    ("coffee", 2.0),
)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def model_dir() -> Path:
    from bgsvc.config import Settings

    return Settings().model_dir


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# -- 1. the limit ------------------------------------------------------------------------


def _engine(threads: int) -> Any:
    """The default model exactly as the service loads it (same prepared file, session
    options, provider and threads)."""
    from bgsvc.config import Settings
    from bgsvc.inference.engine import Engine
    from bgsvc.inference.loader import runtime_options
    from bgsvc.inference.registry import resolve

    settings = Settings(intra_op_threads=threads)
    spec = resolve(settings.default_model, settings)
    return Engine.load(spec, spec.file_in(settings.model_dir), runtime_options(settings))


def _tensors(engine: Any, images: list[BenchImage]) -> list[Any]:
    from bgsvc.config import Settings
    from bgsvc.imaging.decode import DecodeLimits, decode

    settings = Settings()
    limits = DecodeLimits(
        frozenset(settings.allowed_formats), settings.max_pixels, settings.max_edge
    )
    return [engine.preprocess(decode(im.data, limits).rgb) for im in images]


def _limit_worker(threads: int, runs: int, barrier: Any, out: Any) -> None:
    engine = _engine(threads)
    tensors = _tensors(engine, build_set(QUICK_SET, HERE / "out" / "images", duplicates=0))
    engine.run(tensors[0])
    barrier.wait()
    started = time.perf_counter()
    for i in range(runs):
        engine.run(tensors[i % len(tensors)])
    out.put(time.perf_counter() - started)


def measure_limit(images: list[BenchImage], threads: int, runs: int) -> dict[str, Any]:
    """Single stream (one forward after another) and saturated (one stream per core on
    the same session; or processes for the several-processes layout) images/s."""
    engine = _engine(threads)
    tensors = _tensors(engine, images)
    engine.run(tensors[0])  # first run pays allocations
    latencies = []
    started = time.perf_counter()
    for i in range(runs):
        t0 = time.perf_counter()
        engine.run(tensors[i % len(tensors)])
        latencies.append(time.perf_counter() - t0)
    single_wall = time.perf_counter() - started

    streams = cores()
    per_stream = max(2, runs // streams)
    sat_latencies: list[float] = []
    lock = threading.Lock()

    def stream(offset: int) -> None:
        for i in range(per_stream):
            t0 = time.perf_counter()
            engine.run(tensors[(offset + i) % len(tensors)])
            with lock:
                sat_latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    workers = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    sat_wall = time.perf_counter() - started
    single = {
        "p50": percentile(latencies, 50),
        "min": min(latencies),
        "throughput": runs / single_wall,
        "runs": latencies,
    }
    saturated = {
        "streams": streams,
        "p50": percentile(sat_latencies, 50),
        "throughput": streams * per_stream / sat_wall,
    }
    return {
        "threads": threads,
        "provider": engine.providers[0],
        "single": single,
        "saturated": saturated,
        # The best the bare session does with these threads, however it is driven.
        "throughput": max(single["throughput"], saturated["throughput"]),
    }


def measure_limit_processes(procs: int, threads: int, runs: int) -> float:
    """Images/s of ``procs`` processes each running bare forwards with ``threads``."""
    return process_throughput(_limit_worker, (threads,), procs, runs)


# -- 2. the service -----------------------------------------------------------------------


def node_env(threads: int, **extra: str) -> dict[str, str]:
    env = {
        "BGSVC_INTRA_OP_THREADS": str(threads),
        # Every load level admitted: the curve shows queueing, not the 429 policy
        # (the overload scenario measures that with the default queue bound).
        "BGSVC_MAX_QUEUE": "8",
        # Duplicate uploads would be served from the cache and flatter the numbers.
        "BGSVC_RESULT_CACHE_BYTES": "0",
    }
    env.update(extra)
    return env


def warm(targets: list[Target], body: bytes) -> None:
    # The first requests pay one-off costs (lazy imports, thread pools, first allocations).
    closed_loop(targets, [body], len(targets), 2 * len(targets))


def run_levels(
    label: str, targets: list[Target], images: list[BenchImage], plan: Plan
) -> list[LoadSummary]:
    bodies = [im.data for im in images]
    levels = []
    for c in CONCURRENCY:
        samples = closed_loop(targets, bodies, c, plan.requests[c])
        summary = summarise(label, c, samples)
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


def overload(plan: Plan, image: BenchImage, sustainable: float, c1_p50: float) -> dict[str, Any]:
    """4x the sustainable rate at a node with the default queue bound: accepted requests
    should keep a bounded latency and the rest get fast 429s."""
    from bgsvc.config import Settings

    queue = Settings().max_queue
    node = Node(
        {"BGSVC_INTRA_OP_THREADS": str(cores()), "BGSVC_RESULT_CACHE_BYTES": "0"},
        OUT / "logs" / "overload.log",
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


def cache_check(image: BenchImage) -> dict[str, Any]:
    """The same upload twice at a node with the result cache on: MISS, then HIT."""
    node = Node({"BGSVC_INTRA_OP_THREADS": str(cores())}, OUT / "logs" / "cache.log")
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


# -- memory -------------------------------------------------------------------------------


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
    plan: Plan, images: list[BenchImage], extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    size = 1024
    model = cheap_model(OUT / "prepared", size)
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
        OUT / "logs" / "memory.log",
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


def soak(plan: Plan, images: list[BenchImage]) -> dict[str, Any]:
    """RSS of each of two gunicorn workers over ``plan.soak_requests`` 2 MP requests."""
    size = 1024
    model = cheap_model(OUT / "prepared", size)
    body = two_megapixel(images).data
    return worker_memory(OUT, model, size, body, plan.soak_requests, say)


# -- 3. the cluster -----------------------------------------------------------------------


def chaos_run(plan: Plan) -> dict[str, Any]:
    """The fleet on the real model under load while nodes are killed (benchmarks.chaos)."""
    from bgsvc.cluster import ClusterError, find_nginx

    try:
        find_nginx()
    except ClusterError as exc:
        note = f"Chaos run skipped: {exc}."
        say(note)
        return {"skipped": True, "note": note}
    bodies = [im.data for im in build_set(CHAOS_SET, OUT / "images", duplicates=0)]
    say(f"chaos: {plan.chaos_seconds:.0f} s, kill -9 every {plan.chaos_interval:.0f} s")
    return chaos(OUT, bodies, plan.chaos_seconds, plan.chaos_interval, say)


def cluster(plan: Plan, images: list[BenchImage]) -> dict[str, Any]:
    why_not = cluster_available()
    if why_not is not None:
        note = f"Cluster part skipped: {why_not}."
        say(note)
        return {"skipped": True, "note": note}
    run_dir = OUT / "cluster"
    proc = ClusterProc(2, 1, 1, node_env(1), run_dir)
    try:
        proc.wait_ready()
        warm([proc.target], images[0].data)
        levels = run_levels("cluster 2 nodes x 1 thread (nginx)", [proc.target], images, plan)
    except RuntimeError as exc:
        note = f"Cluster part failed: {exc} (log: {proc.log_path})."
        say(note)
        return {"skipped": True, "note": note}
    finally:
        proc.stop()
    return {
        "levels": [lv.as_dict() for lv in levels],
        "note": "2 nodes (gunicorn, 1 worker x 1 thread each) behind nginx: rows "
        "'cluster ...' in the load table above.",
    }


# -- the run ------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    from bgsvc.config import Settings

    settings = Settings()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = math.nan
    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": cores(),
        "model": settings.default_model,
        "cpu_fp32": settings.cpu_fp32,
        "load average at start": load,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def say_limit(limit: dict[str, Any]) -> None:
    say(
        f"limit single {limit['single']['p50']:.3f}s ({limit['single']['throughput']:.3f} img/s),"
        f" saturated {limit['saturated']['throughput']:.3f} img/s"
    )


def run(plan: Plan, out: Path, with_cluster: bool, with_memory: bool) -> dict[str, Any]:
    started = time.perf_counter()
    images = build_set(plan.images, out / "images")
    two_mp = two_megapixel(images)
    n = cores()
    results: dict[str, Any] = {"mode": plan.mode, "environment": environment()}
    c1_2mp: list[Any] = []

    # The machine may be shared: the limit is measured before and after the service runs
    # and the better of the two is used, so a busy moment cannot flatter the service.
    say(f"limit: bare session, {n} threads, {plan.limit_runs} runs")
    limits = [measure_limit(images, n, plan.limit_runs)]
    say_limit(limits[0])
    if "2x1" in plan.layouts:
        tp_2x1 = measure_limit_processes(n, 1, max(2, plan.limit_runs // 2))
        say(f"limit {n} processes x 1 thread: {tp_2x1:.3f} img/s")

    levels: list[LoadSummary] = []
    node = Node(node_env(n), OUT / "logs" / "node-1x2.log")
    rss: list[tuple[str, float]] = []
    try:
        node.wait_ready()
        warm([node.target], two_mp.data)
        rss.append(("after warm-up", rss_kib(node.pid) / 1024))
        levels += run_levels(f"1 process x {n} threads", [node.target], images, plan)
        rss.append(("after the load levels", rss_kib(node.pid) / 1024))
        c1_2mp = closed_loop([node.target], [two_mp.data], 1, max(3, plan.requests[1] - 2))
        results["by_size"] = by_size(node.target, images)
        rss.append(("after the by-size pass", rss_kib(node.pid) / 1024))
    finally:
        node.stop()
    results["real_model_rss_mib"] = rss
    if "2x1" in plan.layouts:
        nodes = [Node(node_env(1), OUT / "logs" / f"node-2x1-{i}.log") for i in range(n)]
        try:
            for nd in nodes:
                nd.wait_ready()
            targets = [nd.target for nd in nodes]
            warm(targets, two_mp.data)
            levels += run_levels(f"{n} processes x 1 thread", targets, images, plan)
        finally:
            for nd in nodes:
                nd.stop()

    say("limit again, after the service runs")
    limits.append(measure_limit(images, n, plan.limit_runs))
    say_limit(limits[1])
    limit = max(limits, key=lambda lm: lm["throughput"])
    limit["single"]["p50"] = min(lm["single"]["p50"] for lm in limits)
    limit["measurements"] = [
        {"single_p50": lm["single"]["p50"], "throughput": lm["throughput"]} for lm in limits
    ]
    if "2x1" in plan.layouts:
        limit["processes_2x1_throughput"] = tp_2x1
    results["limit"] = limit
    results["load"] = [lv.as_dict() for lv in levels]

    default = [lv for lv in levels if lv.label.startswith("1 process")]
    best_tp = max(lv.throughput for lv in default)
    c1_latency = percentile([s.latency for s in c1_2mp if s.status == 200], 50)
    limit_latency_2mp = limit["single"]["p50"]
    results["headline"] = [
        [
            "service throughput (best of c=1..8) / bare limit",
            ratio(best_tp, limit["throughput"]),
            ">= 0.95",
        ],
        [
            "service p50 at c=1 (2 MP JPEG) / bare forward p50",
            ratio(c1_latency, limit_latency_2mp),
            "<= 1.10",
        ],
    ]
    several = [lv for lv in levels if lv.label.startswith(f"{n} processes")]
    if several and limit.get("processes_2x1_throughput"):
        results["headline"].append(
            [
                f"{n} processes x 1 thread: service throughput / bare {n}x1 limit",
                ratio(max(lv.throughput for lv in several), limit["processes_2x1_throughput"]),
                ">= 0.95",
            ]
        )
        results["headline"].append(
            [
                f"{n} processes x 1 thread: service throughput / 1x{n} bare limit",
                ratio(max(lv.throughput for lv in several), limit["throughput"]),
                "(layout choice)",
            ]
        )
    results["c1_2mp_p50"] = c1_latency
    say(f"headline: {results['headline']}")

    results["cache"] = cache_check(two_mp)
    results["overload"] = overload(plan, two_mp, best_tp, c1_latency)
    if with_memory:
        results["memory"] = memory(plan, images)
        # glibc gives each thread that allocates its own arena and keeps freed memory in
        # them; with a fixed arena count the RSS shows whether growth is a leak or that.
        results["memory_arena2"] = memory(plan, images, {"MALLOC_ARENA_MAX": "2"})
        if plan.soak_requests:
            results["soak"] = soak(plan, images)
    if with_cluster:
        results["cluster"] = cluster(plan, images)
        for level in results["cluster"].get("levels", []):
            results["load"].append(level)
        if plan.chaos_seconds:
            results["chaos"] = chaos_run(plan)
    results["elapsed_s"] = time.perf_counter() - started
    return results


def run_only(plan: Plan, sections: tuple[str, ...]) -> dict[str, Any]:
    """Just the named ``sections`` (of SECTIONS), at the plan's lengths."""
    images = build_set(plan.images, OUT / "images")
    results: dict[str, Any] = {
        "mode": f"{plan.mode} (only {', '.join(sections)})",
        "environment": environment(),
    }
    if "memory" in sections:
        results["memory"] = memory(plan, images)
        results["memory_arena2"] = memory(plan, images, {"MALLOC_ARENA_MAX": "2"})
    if "soak" in sections:
        results["soak"] = soak(plan, images)
    if "cluster" in sections:
        results["cluster"] = cluster(plan, images)
        results["load"] = results["cluster"].get("levels", [])
    if "chaos" in sections:
        results["chaos"] = chaos_run(plan)
    return results


def only_sections(text: str) -> tuple[str, ...]:
    """``--only``'s comma-separated section names, checked against SECTIONS."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none)'}; choose from "
            + ", ".join(SECTIONS)
        )
    return names


def plan_from(args: argparse.Namespace) -> Plan:
    """The quick or full plan with the lengths given on the command line."""
    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.chaos_seconds is not None:
        changes["chaos_seconds"] = args.chaos_seconds
    if args.chaos_interval is not None:
        changes["chaos_interval"] = args.chaos_interval
    if args.soak_requests is not None:
        changes["soak_requests"] = args.soak_requests
    return dataclasses.replace(plan, **changes)


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few minutes, fewer requests")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--no-cluster", action="store_true", help="skip the nginx cluster part")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory soaks")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the memory soak (both malloc settings)"
    )
    parser.add_argument(
        "--only",
        type=only_sections,
        help=f"only these sections, comma-separated ({', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--chaos-seconds",
        type=float,
        help="length of the chaos run (full: 300, quick: 0 = skipped)",
    )
    parser.add_argument(
        "--chaos-interval", type=float, help="seconds between kills in the chaos run (30)"
    )
    parser.add_argument(
        "--soak-requests",
        type=int,
        help="requests of the per-worker memory run (full: 20000, quick: 1000; 0 = skipped)",
    )
    return parser


def write(results: dict[str, Any], out: Path) -> None:
    report.write_json(out / "results.json", results)
    (out / "results.md").write_text(report.render_markdown(results))
    limit_tp = results.get("limit", {}).get("throughput", 0.0)
    levels = results.get("load", [])
    # A run of single sections may have no load levels: nothing to draw then.
    drawn = bool(levels) and report.plot(out / "bench.png", levels, limit_tp)
    say(
        f"wrote {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'bench.png'}" if drawn else " (no plot: no load levels or no matplotlib)")
    )


def main(argv: list[str] | None = None) -> int:
    args = arg_parser().parse_args(argv)
    plan = plan_from(args)
    global OUT
    OUT = args.out
    from bgsvc.config import Settings
    from bgsvc.inference.registry import resolve

    settings = Settings()
    spec = resolve(settings.default_model, settings)
    if not spec.file_in(settings.model_dir).is_file():
        print(
            f"bench: the default model is not at {spec.file_in(settings.model_dir)}; "
            "run `bgsvc models fetch` (or `make model`) first.",
            file=sys.stderr,
        )
        return 2
    if args.memory_only:
        results = run_only(plan, ("memory",))
        results["mode"] = f"{plan.mode} (memory only)"
        args.out = args.out / "memory-only"
    elif args.only:
        results = run_only(plan, args.only)
        args.out = args.out / f"only-{'-'.join(args.only)}"
    else:
        results = run(plan, args.out, not args.no_cluster, not args.skip_memory)
    write(results, args.out)
    print(report.render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
