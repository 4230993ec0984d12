"""`make bench` on a CUDA host: the bare CUDA session (1 and 4 threads calling run() on one
session) against the service under gunicorn (1, 4, 8 workers; c=1, 32, 64) on a 2 MP JPEG
to PNG with the result cache off, and their ratio.

Which bench runs is decided by :func:`choose_bench` from what ONNX Runtime offers and where
a session really ran, so the decision is testable on a machine without a GPU; the
measuring itself is only ever run on one (docs/gpu.md says what was measured where).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from benchmarks.images import BenchImage
from benchmarks.limit import _tensors
from benchmarks.load import Target, closed_loop
from benchmarks.nodes import free_port
from benchmarks.plan import cores, say
from benchmarks.soak import worker_pids
from benchmarks.stats import LoadSummary, percentile, ratio, summarise

CUDA = "CUDAExecutionProvider"
READY_TIMEOUT_S = 600.0  # cuDNN's exhaustive algorithm search runs in every worker's warm-up


@dataclass(frozen=True)
class GpuPlan:
    """How much of the CUDA bench a run does."""

    limit_threads: tuple[int, ...] = (1, 4)
    limit_runs: int = 400
    workers: tuple[int, ...] = (1, 4, 8)
    concurrency: tuple[int, ...] = (1, 32, 64)
    # Each level sends this many requests per client (at least min_requests in all).
    requests_per_client: int = 8
    min_requests: int = 100

    def requests(self, concurrency: int) -> int:
        """Requests of one load level: enough for every client to send several."""
        return max(self.min_requests, concurrency * self.requests_per_client)


FULL_GPU = GpuPlan()
QUICK_GPU = GpuPlan(limit_runs=100, requests_per_client=3, min_requests=30)


def choose_bench(available: Sequence[str], session_provider: str | None) -> Literal["cpu", "gpu"]:
    """``gpu`` only when this onnxruntime has the CUDA provider *and* a session really ran
    on it (ORT falls back to the CPU by itself when CUDA or cuDNN cannot start)."""
    return "gpu" if CUDA in available and session_provider == CUDA else "cpu"


def _engine() -> Any:
    """The default model as a GPU host's service loads it (the engine factory with the
    provider settings), without the wrapped graph: the bare forward pass. Not
    benchmarks.limit's engine, which is the CPU's by design."""
    from bgsvc.config import Settings
    from bgsvc.inference.factory import load_engine
    from bgsvc.inference.loader import runtime_options
    from bgsvc.inference.registry import resolve

    settings = Settings(graph_pipeline=False)
    spec = resolve(settings.default_model, settings)
    return load_engine(spec, spec.file_in(settings.model_dir), runtime_options(settings))


def session_provider() -> tuple[list[str], str | None]:
    """ORT's providers and the one the service's session for the default model ran on
    (None when none could be loaded)."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    if CUDA not in available:
        return available, None
    try:
        engine = _engine()
        providers: list[str] = list(engine.providers)
    except Exception as exc:  # a broken CUDA stack: the CPU bench still runs
        say(f"CUDA provider present but no session on it ({exc}); running the CPU bench")
        return available, None
    return available, providers[0] if providers else None


def bare_limit(image: BenchImage, threads: int, runs: int) -> dict[str, Any]:
    """``threads`` threads calling run() on one session, on one 2 MP JPEG preprocessed
    once: what the GPU does with no HTTP, decode or encode around it."""
    engine = _engine()
    (tensor,) = _tensors(engine, [image])
    for _ in range(3):  # cuDNN's algorithm search and first allocations
        engine.run(tensor)
    per_thread = max(1, runs // threads)
    latencies: list[float] = []
    lock = threading.Lock()

    def stream() -> None:
        mine = []
        for _ in range(per_thread):
            t0 = time.perf_counter()
            engine.run(tensor)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    pool = [threading.Thread(target=stream) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started
    return {
        "threads": threads,
        "provider": engine.providers[0],
        "p50": percentile(latencies, 50),
        "throughput": threads * per_thread / wall,
    }


def _service_levels(workers: int, image: BenchImage, plan: GpuPlan, out: Path) -> list[LoadSummary]:
    from bgsvc.cluster import ClusterConfig, Node, NodeSpec, find_deploy_dir

    top = max(plan.concurrency)
    config = ClusterConfig(
        nodes=[NodeSpec(free_port())],
        run_dir=out / "gpu" / f"workers-{workers}",
        workers=workers,
        threads=max(1, cores() // workers),
        env={
            "BGSVC_RESULT_CACHE_BYTES": "0",
            # Every client admitted even with one worker: the levels show queueing, not 429s.
            "BGSVC_MAX_QUEUE": str(top),
            "BGSVC_LOG_LEVEL": "warning",
            "BGSVC_UI_ENABLED": "false",
        },
    )
    node = Node(config.nodes[0], config, find_deploy_dir())
    target = Target(config.host, node.port)
    label = f"gunicorn {workers} worker(s)"
    levels = []
    node.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (node.ready() and len(worker_pids(node.pid)) == workers):
            if not node.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not become ready; see {node.log_path}")
            time.sleep(0.5)
        # Every worker answers a few times first (its own warm-up, first buffers).
        closed_loop([target], [image.data], workers, 4 * workers)
        for c in plan.concurrency:
            summary = summarise(label, c, closed_loop([target], [image.data], c, plan.requests(c)))
            levels.append(summary)
            say(
                f"{label} c={c}: {summary.throughput:.1f} img/s, p50 {summary.p50 * 1000:.0f} ms"
                f", ok {summary.ok}, 429 {summary.rejected}, errors {summary.errors}"
            )
    finally:
        node.terminate()
        if node.wait(60) is None:
            node.kill()
        node.close()
    return levels


def ratio_table(
    levels: Sequence[LoadSummary], limit_throughput: float, outside_model_ms: dict[str, float]
) -> dict[str, Any]:
    """Service throughput / the bare limit for every (workers, c), with the c=1 CPU time
    outside the model (Server-Timing without inference and queue)."""
    rows = [
        [
            lv.label,
            lv.concurrency,
            lv.throughput,
            ratio(lv.throughput, limit_throughput),
            lv.p50 * 1000,
            outside_model_ms.get(f"{lv.label} c={lv.concurrency}", float("nan")),
        ]
        for lv in levels
    ]
    return {
        "headers": [
            "setup",
            "c",
            "img/s",
            "service / bare limit",
            "p50 ms",
            "outside the model ms",
        ],
        "rows": rows,
    }


def outside_model(summary: LoadSummary) -> float:
    """Mean ms per request of every Server-Timing stage except inference and queue."""
    return sum(v for k, v in summary.stages.items() if k not in ("inference", "queue")) * 1000


def run_gpu(image: BenchImage, plan: GpuPlan, out: Path) -> dict[str, Any]:
    """The CUDA bench; results shaped like the CPU bench's (limit, headline, load)."""
    bare = []
    for threads in plan.limit_threads:
        say(f"gpu limit: bare CUDA session, {threads} thread(s) calling run()")
        bare.append(bare_limit(image, threads, plan.limit_runs))
        say(f"  {bare[-1]['throughput']:.1f} img/s, p50 {bare[-1]['p50'] * 1000:.1f} ms")
    single = bare[0]
    best = max(bare, key=lambda b: b["throughput"])
    limit = {
        "threads": cores(),
        "provider": single["provider"],
        "single": {"p50": single["p50"], "throughput": single["throughput"]},
        "saturated": {
            "streams": best["threads"],
            "p50": best["p50"],
            "throughput": best["throughput"],
        },
        "throughput": best["throughput"],
        "bare": bare,
    }
    levels: list[LoadSummary] = []
    for workers in plan.workers:
        levels += _service_levels(workers, image, plan, out)
    outside = {f"{lv.label} c={lv.concurrency}": outside_model(lv) for lv in levels}
    best_level = max(levels, key=lambda lv: lv.throughput)
    c1 = [lv for lv in levels if lv.concurrency == 1]
    headline = [
        [
            f"service throughput (best: {best_level.label} c={best_level.concurrency}) / limit",
            ratio(best_level.throughput, limit["throughput"]),
            "(GPU: measured, no target yet)",
        ],
    ]
    if c1:
        headline.append(
            [
                "service p50 at c=1 (2 MP JPEG to PNG) / bare forward p50",
                ratio(min(lv.p50 for lv in c1), single["p50"]),
                "(GPU: measured, no target yet)",
            ]
        )
    return {
        "limit": limit,
        "headline": headline,
        "load": [lv.as_dict() for lv in levels],
        "gpu": {
            "table": ratio_table(levels, limit["throughput"], outside),
            "note": f"Bare limit = best of {', '.join(str(t) for t in plan.limit_threads)} "
            f"thread(s) calling run() on one CUDA session: {limit['throughput']:.1f} img/s. "
            "Request body: one 2 MP JPEG, PNG out, result cache off.",
        },
    }
