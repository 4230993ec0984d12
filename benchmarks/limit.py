"""The model's own limit: bare ONNX Runtime forwards on the session the service would
load, single stream, saturated, and as several processes."""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.images import QUICK_SET, BenchImage, build_set
from benchmarks.load import process_throughput
from benchmarks.plan import HERE, cores, say
from benchmarks.stats import percentile


def _engine(threads: int) -> Any:
    """The default model as the service loads it (same prepared file, session options,
    provider and threads), without the pre/post-processing the service wraps around it:
    the model's own forward pass is the limit the service is held to."""
    from bgsvc.config import Settings
    from bgsvc.inference.engine import Engine
    from bgsvc.inference.loader import runtime_options
    from bgsvc.inference.registry import resolve

    settings = Settings(intra_op_threads=threads, graph_pipeline=False)
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
    # A spawned process does not see --out: it builds its images in the default folder.
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


def say_limit(limit: dict[str, Any]) -> None:
    say(
        f"limit single {limit['single']['p50']:.3f}s ({limit['single']['throughput']:.3f} img/s),"
        f" saturated {limit['saturated']['throughput']:.3f} img/s"
    )
