"""The benchmark: the model's own limit, the service at 1/2/4/8 concurrent clients, the
scheduling layouts, overload, the result cache, jobs against the sync path (embedded and
with Redis), memory (short, and per worker over a long run), the cluster when there is one,
and a chaos run (kill -9 of nodes under load). On a host whose default-model session really
runs on CUDA, the CUDA bench instead (benchmarks/gpu.py: bare session vs gunicorn 1/4/8
workers at c=1/32/64).

    python -m benchmarks.bench [--quick] [--out DIR] [--no-cluster] [--skip-memory]
        [--chaos-seconds S] [--chaos-interval S] [--soak-requests N]
        [--jobs-batch N] [--jobs-idle N] [--redis]
        [--only memory,soak,chaos,cluster,jobs]

Writes DIR/results.json, DIR/results.md and DIR/bench.png (DIR: benchmarks/out).
Nothing here asserts a number: the run prints and records.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import gpu, jobs, rembg_server, report
from benchmarks.cluster import CHAOS_SET, chaos_run, cluster
from benchmarks.engine_memory import engine_memory
from benchmarks.images import build_set, two_megapixel
from benchmarks.limit import (
    candidates,
    label,
    measure_limit,
    measure_limit_processes,
    measure_limits,
    say_limit,
)
from benchmarks.load import closed_loop
from benchmarks.memory import memory, soak
from benchmarks.nodes import Node, rss_kib
from benchmarks.outside import outside_model
from benchmarks.plan import HERE, SECTIONS, Plan, cores, only_sections, plan_from, say
from benchmarks.service import by_size, cache_check, node_env, overload, run_levels, warm
from benchmarks.stats import LoadSummary, percentile, ratio


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    from bgsvc.config import Settings
    from bgsvc.inference import openvino_engine

    settings = Settings()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = math.nan
    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "openvino": openvino_engine.version() if openvino_engine.available() else None,
        "engines": [label(c) for c in candidates()],
        "cpu": platform.processor() or platform.machine(),
        "cores": cores(),
        "model": settings.default_model,
        "cpu_fp32": settings.cpu_fp32,
        "load average at start": load,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run(plan: Plan, out: Path, with_cluster: bool, with_memory: bool) -> dict[str, Any]:
    started = time.perf_counter()
    images = build_set(plan.images, out / "images")
    two_mp = two_megapixel(images)
    n = cores()
    results: dict[str, Any] = {"mode": plan.mode, "environment": environment()}
    c1_2mp: list[Any] = []

    # The machine may be shared: the limit is measured before and after the service runs
    # and the better of the two is used, so a busy moment cannot flatter the service.
    say(f"limit: bare forwards of every engine and precision, {n} threads, {plan.limit_runs} runs")
    limits = [measure_limits(images, n, plan.limit_runs)]
    best = next(c for c in candidates() if label(c) == limits[0]["best"])
    say(f"the limit: {label(best)}")
    if "2x1" in plan.layouts:
        tp_2x1 = measure_limit_processes(n, 1, max(2, plan.limit_runs // 2), best)
        say(f"limit {n} processes x 1 thread: {tp_2x1:.3f} img/s")
    bare = limits[0]["throughput"]
    # Distinct 2 MP photographs: the row the throughput target is stated for.
    two_mp_set = build_set(CHAOS_SET, out / "images", duplicates=0)

    levels: list[LoadSummary] = []
    node = Node(node_env(n), out / "logs" / "node-1x2.log")
    rss: list[tuple[str, float]] = []
    try:
        node.wait_ready()
        warm([node.target], two_mp.data)
        rss.append(("after warm-up", rss_kib(node.pid) / 1024))
        levels += run_levels(f"1 process x {n} threads", [node.target], images, plan, bare)
        two_mp_levels = run_levels(
            f"1 process x {n} threads, 2 MP JPEG to PNG", [node.target], two_mp_set, plan, bare
        )
        levels += two_mp_levels
        rss.append(("after the load levels", rss_kib(node.pid) / 1024))
        results["engine"] = node_engine(node.target)
        c1_2mp = closed_loop([node.target], [two_mp.data], 1, max(3, plan.requests[1] - 2))
        results["by_size"] = by_size(node.target, images)
        results["outside_model"] = outside_model(node.target, two_mp, plan.requests[1])
        rss.append(("after the by-size pass", rss_kib(node.pid) / 1024))
    finally:
        node.stop()
    results["real_model_rss_mib"] = rss
    if "2x1" in plan.layouts:
        nodes = [Node(node_env(1), out / "logs" / f"node-2x1-{i}.log") for i in range(n)]
        try:
            for nd in nodes:
                nd.wait_ready()
            targets = [nd.target for nd in nodes]
            warm(targets, two_mp.data)
            levels += run_levels(f"{n} processes x 1 thread", targets, images, plan, bare)
        finally:
            for nd in nodes:
                nd.stop()

    say(f"limit again ({label(best)}), after the service runs")
    limits.append(measure_limit(images, n, plan.limit_runs, best))
    say_limit(limits[1])
    limit = max(limits, key=lambda lm: lm["throughput"])
    limit["candidates"] = limits[0]["candidates"]
    limit["best"] = limits[0]["best"]
    limit["single"]["p50"] = min(lm["single"]["p50"] for lm in limits)
    limit["measurements"] = [
        {"single_p50": lm["single"]["p50"], "throughput": lm["throughput"]} for lm in limits
    ]
    if "2x1" in plan.layouts:
        limit["processes_2x1_throughput"] = tp_2x1
    results["limit"] = limit
    results["load"] = [lv.as_dict() for lv in levels]

    best_tp = max(lv.throughput for lv in two_mp_levels)
    c1_latency = percentile([s.latency for s in c1_2mp if s.status == 200], 50)
    limit_latency_2mp = limit["single"]["p50"]
    results["headline"] = [
        [
            f"service throughput, 2 MP JPEG to PNG (best of c=1..8) / bare limit ({limit['best']})",
            ratio(best_tp, limit["throughput"]),
            ">= 0.9",
        ],
        [
            "service p50 at c=1 (2 MP JPEG) / bare forward p50",
            ratio(c1_latency, limit_latency_2mp),
            "<= 1.15",
        ],
    ]
    # rembg serves the float32 copy the service's engines start from.
    model_file = next(_prepared_dir().glob(f"{default_model_stem()}-*-fp32.onnx"), None)
    if model_file is not None:
        results["rembg_server"] = rembg_server.measure(
            two_mp_set, model_file, out, plan.requests[1]
        )
        if not results["rembg_server"].get("skipped"):
            results["headline"].append(
                [
                    "service throughput / rembg's server (same photos, weights, machine)",
                    ratio(best_tp, results["rembg_server"]["throughput"]),
                    ">= 5",
                ]
            )
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

    results["cache"] = cache_check(two_mp, out)
    results["overload"] = overload(plan, two_mp, best_tp, c1_latency, out)
    results["jobs"] = jobs_part(plan, two_mp.data, out)
    results["headline"] += jobs_headline(results["jobs"])
    if with_memory:
        results["memory"] = memory(plan, images, out)
        # glibc gives each thread that allocates its own arena and keeps freed memory in
        # them; with a fixed arena count the RSS shows whether growth is a leak or that.
        results["memory_arena2"] = memory(plan, images, out, {"MALLOC_ARENA_MAX": "2"})
        if plan.soak_requests:
            results["soak"] = soak(plan, images, out)
    if with_cluster:
        results["cluster"] = cluster(plan, images, out, limit["throughput"])
        for level in results["cluster"].get("levels", []):
            results["load"].append(level)
        if plan.chaos_seconds:
            results["chaos"] = chaos_run(plan, out)
    results["elapsed_s"] = time.perf_counter() - started
    return results


def _prepared_dir() -> Path:
    from bgsvc.config import Settings
    from bgsvc.inference.prepare import prepared_dir

    return prepared_dir(Settings().model_dir)


def default_model_stem() -> str:
    from bgsvc.config import Settings
    from bgsvc.inference.registry import resolve

    settings = Settings()
    return resolve(settings.default_model, settings).file_in(settings.model_dir).stem


def node_engine(target: Any) -> dict[str, Any]:
    """What the node under test runs on, as its /ready says."""
    import http.client
    import json

    conn = http.client.HTTPConnection(target.host, target.port, timeout=10)
    try:
        conn.request("GET", "/ready")
        body: dict[str, Any] = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return dict(body.get("engines", {}))


def jobs_part(plan: Plan, photo: bytes, out: Path) -> dict[str, Any]:
    """The jobs row (benchmarks/jobs.py) in each of the plan's modes; the Redis one is
    skipped, with a note, where redis-server is missing."""
    measured, skipped = [], []
    for variant in plan.jobs_variants:
        redis = variant == "redis"
        if redis and shutil.which("redis-server") is None:
            skipped.append("Redis mode (no redis-server: make system-deps)")
            continue
        measured.append(jobs.measure(photo, plan.jobs_items, plan.jobs_idle, out, redis=redis))
    return jobs.section(measured, skipped)


def jobs_headline(section: dict[str, Any]) -> list[list[Any]]:
    return [
        [f"jobs ({v['mode']}): batch / sync throughput", v["throughput"]["ratio"], ">= 0.9"]
        for v in section["variants"]
    ]


def run_cuda(plan: Plan, out: Path) -> dict[str, Any]:
    """The bench of a CUDA host (benchmarks/gpu.py) instead of the CPU sections."""
    images = build_set(plan.images, out / "images")
    gpu_plan = gpu.QUICK_GPU if plan.mode == "quick" else gpu.FULL_GPU
    environment_ = environment() | {"provider": gpu.CUDA}
    return {"mode": f"{plan.mode} (CUDA)", "environment": environment_} | gpu.run_gpu(
        two_megapixel(images), gpu_plan, out
    )


def run_only(plan: Plan, sections: tuple[str, ...], out: Path) -> dict[str, Any]:
    """Just the named ``sections`` (of SECTIONS), at the plan's lengths."""
    images = build_set(plan.images, out / "images")
    results: dict[str, Any] = {
        "mode": f"{plan.mode} (only {', '.join(sections)})",
        "environment": environment(),
    }
    if "memory" in sections:
        results["memory"] = memory(plan, images, out)
        results["memory_arena2"] = memory(plan, images, out, {"MALLOC_ARENA_MAX": "2"})
    if "soak" in sections:
        results["soak"] = soak(plan, images, out)
    if "cluster" in sections:
        results["cluster"] = cluster(plan, images, out)
        results["load"] = results["cluster"].get("levels", [])
    if "chaos" in sections:
        results["chaos"] = chaos_run(plan, out)
    if "jobs" in sections:
        results["jobs"] = jobs_part(plan, two_megapixel(images).data, out)
        results["headline"] = jobs_headline(results["jobs"])
    if "engine-memory" in sections:
        results["engine_memory"] = engine_memory(out, plan.memory_requests)
    return results


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
    parser.add_argument(
        "--jobs-batch",
        type=int,
        help="images in the jobs part's batch, and sync requests against it (full 200, quick 20)",
    )
    parser.add_argument(
        "--jobs-idle",
        type=int,
        help="single jobs sent to an idle node for enqueue-to-start (full 50, quick 10)",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="jobs part: only the node with its own Redis (BGSVC_REDIS_URL); "
        "a full run measures both modes, --only jobs the embedded one",
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
    # Images, logs and prepared files stay in --out; results of a part-run go below it.
    out = dest = args.out
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
        results = run_only(plan, ("memory",), out)
        results["mode"] = f"{plan.mode} (memory only)"
        dest = out / "memory-only"
    elif args.only:
        results = run_only(plan, args.only, out)
        dest = out / f"only-{'-'.join(args.only)}"
    elif gpu.choose_bench(*gpu.session_provider()) == "gpu":
        results = run_cuda(plan, out)
    else:
        results = run(plan, out, not args.no_cluster, not args.skip_memory)
    write(results, dest)
    print(report.render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
