"""The model's own limit: bare forwards of every engine and precision this host offers
(ONNX Runtime float32; OpenVINO f32 and the bf16/f16 the CPU executes natively), each on
the model pruned to the one output the service reads, single stream, saturated, and as
several processes. The fastest is "the limit" the service is held to."""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.images import QUICK_SET, BenchImage, build_set
from benchmarks.load import process_throughput
from benchmarks.plan import HERE, cores, say
from benchmarks.stats import percentile

Candidate = tuple[str, str]  # (engine, precision)
ORT_F32: Candidate = ("onnxruntime", "f32")


def candidates() -> list[Candidate]:
    """Every engine and precision this host can run the model at."""
    from bgsvc.inference import openvino_engine

    found = [ORT_F32]
    if openvino_engine.available():
        found.append(("openvino", "f32"))
        found += [("openvino", p) for p in openvino_engine.native_precisions()]
    return found


def label(candidate: Candidate) -> str:
    return "-".join(candidate)


def _engine(threads: int, candidate: Candidate = ORT_F32, requests: int = 1) -> Any:
    """The default model on ``candidate``, from the same prepared file the service's
    OpenVINO engine compiles (float32, pruned to the output the service reads), with the
    service's thread count, without the pre/post-processing the service wraps around it:
    the model's own forward pass is the limit the service is held to."""
    import onnxruntime as ort

    from bgsvc.config import Settings
    from bgsvc.inference import openvino_engine, prepare
    from bgsvc.inference.engine import Engine, session_options
    from bgsvc.inference.factory import prepared_file
    from bgsvc.inference.loader import runtime_options
    from bgsvc.inference.registry import resolve

    settings = Settings(intra_op_threads=threads, graph_pipeline=False)
    spec = resolve(settings.default_model, settings)
    path = spec.file_in(settings.model_dir)
    runtime = runtime_options(settings)
    assert runtime.prepared_dir is not None
    pruned = prepared_file(spec, path, prepare.source_key(path, spec.sha256), runtime.prepared_dir)
    engine, precision = candidate
    if engine == "onnxruntime":
        session = ort.InferenceSession(
            str(pruned), sess_options=session_options(runtime), providers=["CPUExecutionProvider"]
        )
        return Engine(spec, session, 0.0)
    options = openvino_engine.CompileOptions(
        precision, threads, requests, runtime.prepared_dir / "openvino" / "cache"
    )
    return openvino_engine.OpenVinoEngine.load(
        spec, pruned, options, version="bench", reason="bench"
    )


def _tensors(engine: Any, images: list[BenchImage]) -> list[Any]:
    from bgsvc.config import Settings
    from bgsvc.imaging.decode import DecodeLimits, decode

    settings = Settings()
    limits = DecodeLimits(
        frozenset(settings.allowed_formats), settings.max_pixels, settings.max_edge
    )
    return [engine.preprocess(decode(im.data, limits).rgb) for im in images]


def _limit_worker(threads: int, candidate: Candidate, runs: int, barrier: Any, out: Any) -> None:
    engine = _engine(threads, candidate)
    # A spawned process does not see --out: it builds its images in the default folder.
    tensors = _tensors(engine, build_set(QUICK_SET, HERE / "out" / "images", duplicates=0))
    engine.run(tensors[0])
    barrier.wait()
    started = time.perf_counter()
    for i in range(runs):
        engine.run(tensors[i % len(tensors)])
    out.put(time.perf_counter() - started)


def measure_limits(images: list[BenchImage], threads: int, runs: int) -> dict[str, Any]:
    """Every candidate's limit; the fastest one's fields at the top, all under
    ``candidates``, its name under ``best``."""
    measured = {}
    for candidate in candidates():
        say(f"limit: {label(candidate)}")
        measured[label(candidate)] = measure_limit(images, threads, runs, candidate)
        say_limit(measured[label(candidate)])
    best = max(measured, key=lambda name: measured[name]["throughput"])
    return measured[best] | {"best": best, "candidates": measured}


def measure_limit(
    images: list[BenchImage], threads: int, runs: int, candidate: Candidate = ORT_F32
) -> dict[str, Any]:
    """Single stream (one forward after another) and saturated (one stream per core on
    the same session, or OpenVINO's THROUGHPUT streams; or processes for the
    several-processes layout) images/s."""
    engine = _engine(threads, candidate)
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
    if candidate[0] == "openvino":
        # One infer request per stream, as the service keeps one per admitted inference.
        engine = _engine(threads, candidate, requests=streams)
        engine.run(tensors[0])
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
        "engine": label(candidate),
        "provider": engine.providers[0],
        "single": single,
        "saturated": saturated,
        # The best the bare session does with these threads, however it is driven.
        "throughput": max(single["throughput"], saturated["throughput"]),
    }


def measure_limit_processes(
    procs: int, threads: int, runs: int, candidate: Candidate = ORT_F32
) -> float:
    """Images/s of ``procs`` processes each running bare forwards with ``threads``."""
    return process_throughput(_limit_worker, (threads, candidate), procs, runs)


def say_limit(limit: dict[str, Any]) -> None:
    say(
        f"limit {limit.get('engine', '')} single {limit['single']['p50']:.3f}s "
        f"({limit['single']['throughput']:.3f} img/s),"
        f" saturated {limit['saturated']['throughput']:.3f} img/s"
    )
