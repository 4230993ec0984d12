"""The edge step's full-resolution work in numba on the CPU (imaging.edges) against the
ONNX graphs of inference.edge_graph on a given provider list.

    PYTHONPATH=src:. python -m benchmarks.edge_graph \\
        [--providers CUDAExecutionProvider,CPUExecutionProvider] [--mp 2,12,25] \\
        [--rounds 3] [--threads 1] [--out FILE]

At each size a drawn photo (benchmarks.matting's "busy" background: strands, outline,
veil; 4:3) with a perfect model's matte at 1024 x 1024, and its F^, B^ estimates
(edges.foreground_ml at decontaminate's size, made once, not timed). Timed, min and median
of --rounds after one warm-up call, wall clock on the calling thread: the CPU's
upscale_matte(refine=True) and correct against EdgeGraphs.upscale and .correct (their host
work included: the guide's shrink, the copies, the masked write). Reported with the
largest and the mean absolute difference of the outputs and the share within one level.

Also the other way to make the fit's guide: in a graph ("guide_in_graph": the photo cut
into whole-factor cells by Reshape, averaged, rounded, then a float bilinear step), against
imaging.resize.shrink on the CPU, which EdgeGraphs uses: its time and how far the enlarged
matte then lies from the CPU's.

Prints one JSON line; writes it to --out only when given. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.matting import make_sample
from bgsvc.imaging import edges
from bgsvc.imaging.resize import shrink
from bgsvc.inference.edge_graph import OPSET, EdgeGraphs, _Graph

SIZES = {2: (1632, 1224), 12: (4000, 3000), 25: (5774, 4330)}


def timed(fn: Callable[[], object], rounds: int) -> dict[str, float]:
    fn()  # warm-up: numba's first call, ORT's first run at a shape
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return {"min_ms": round(min(times), 1), "median_ms": round(statistics.median(times), 1)}


def difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {
        "max": int(d.max()),
        "mean": round(float(d.mean()), 6),
        "within_1": round(float((d <= 1).mean()), 7),
    }


def guide_graph() -> Any:
    """photo (uint8 HxWx3) and cells (int64 [h', fy, w', fx], the whole-factor step
    imaging.resize.shrink takes) and grid (int64 [h, w]) -> the guide (uint8 hxwx3)."""
    from onnx import helper

    g = _Graph()
    cells = "cells"
    f32 = g.op("Cast", "photo", to=1)
    # OpenCV's dsize is round(W / fx): a last, partial cell is averaged over what it holds.
    dims = g.op("Gather", cells, g.const([0, 2], np.int64))
    factors = g.op("Gather", cells, g.const([1, 3], np.int64))
    whole = g.op("Mul", dims, factors)
    hw = g.op("Shape", "photo", start=0, end=2)
    kept = g.op("Min", whole, hw)
    zeros = g.const([0, 0], np.int64)
    starts = g.const([0, 0], np.int64)
    cropped = g.op("Slice", f32, starts, kept, g.const([0, 1], np.int64))
    pads = g.op(
        "Concat",
        zeros,
        g.const([0], np.int64),
        g.op("Sub", whole, kept),
        g.const([0], np.int64),
        axis=0,
    )
    padded = g.op("Pad", cropped, pads)
    ones = g.op(
        "Pad",
        g.op(
            "ConstantOfShape",
            g.op("Concat", kept, g.const([1], np.int64), axis=0),
            value=helper.make_tensor("one", 1, [1], [1.0]),
        ),
        pads,
    )
    shape = g.op("Concat", cells, g.const([-1], np.int64), axis=0)
    total = g.op("ReduceSum", g.op("Reshape", padded, shape), g.const([1, 3], np.int64), keepdims=0)
    count = g.op("ReduceSum", g.op("Reshape", ones, shape), g.const([1, 3], np.int64), keepdims=0)
    area = g.op("Round", g.op("Div", total, count))
    nchw = g.op("Unsqueeze", g.op("Transpose", area, perm=[2, 0, 1]), g.const([0], np.int64))
    sizes = g.op("Concat", g.const([1, 3], np.int64), "grid", axis=0)
    small = g.op("Resize", nchw, "", "", sizes, mode="linear")
    small = g.op("Round", g.op("Clip", small, g.f32(0), g.f32(255)))
    chw = g.op("Squeeze", g.op("Cast", small, to=2), g.const([0], np.int64))
    g.nodes.append(helper.make_node("Transpose", [chw], ["guide"], perm=[1, 2, 0]))
    return g.model(
        [
            helper.make_tensor_value_info("photo", 2, ["H", "W", 3]),
            helper.make_tensor_value_info("cells", 7, [4]),
            helper.make_tensor_value_info("grid", 7, [2]),
        ],
        [helper.make_tensor_value_info("guide", 2, ["h", "w", 3])],
        "bgsvc_edge_guide",
    )


def cells_for(photo: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """imaging.resize.shrink's whole-factor step: [h', fy, w', fx] (OpenCV's dsize rounds)."""
    h, w = photo.shape[:2]
    fx, fy = max(1, w // grid[0]), max(1, h // grid[1])
    return np.array([round(h / fy), fy, round(w / fx), fx], np.int64)


def measure(graphs: EdgeGraphs, guide_session: Any, mp: int, rounds: int) -> dict[str, Any]:
    s = make_sample("busy", SIZES[mp])
    photo, matte = s.image, s.matte
    row: dict[str, Any] = {"mp": mp, "size": list(SIZES[mp])}
    cpu_alpha = edges.upscale_matte(matte, photo)
    graph_alpha = graphs.upscale(matte, photo)
    row["upscale"] = {
        "cpu": timed(lambda: edges.upscale_matte(matte, photo), rounds),
        "graph": timed(lambda: graphs.upscale(matte, photo), rounds),
        "diff": difference(cpu_alpha, graph_alpha),
    }
    lo, hi = edges.ML_EDGE
    f_hat, b_hat = edges.foreground_ml(photo, cpu_alpha, min(hi, max(lo, max(photo.shape) // 4)))
    out_cpu, out_graph = photo.copy(), photo.copy()
    row["correct"] = {
        "cpu": timed(lambda: edges.correct(out_cpu, photo, cpu_alpha, f_hat, b_hat), rounds),
        "graph": timed(lambda: graphs.correct(out_graph, photo, cpu_alpha, f_hat, b_hat), rounds),
        "diff": difference(out_cpu, out_graph),
        "soft_share": round(float(((cpu_alpha >= 4) & (cpu_alpha <= 251)).mean()), 4),
    }
    grid = edges._grid((matte.shape[1], matte.shape[0]), (photo.shape[1], photo.shape[0]), 1024)
    feeds = {
        "photo": photo,
        "cells": cells_for(photo, grid),
        "grid": np.array(grid[::-1], np.int64),
    }
    in_graph = guide_session.run(None, feeds)[0]
    on_cpu = shrink(photo, grid)
    with_graph_guide = graphs._upscale.run(
        None, {"photo": photo, "matte": matte, "guide": in_graph}
    )[0]
    row["guide"] = {
        "cpu_shrink": timed(lambda: shrink(photo, grid), rounds),
        "graph_shrink": timed(lambda: guide_session.run(None, feeds), rounds),
        "guide_diff": difference(on_cpu, in_graph),
        "alpha_diff_with_cpu_guide": row["upscale"]["diff"],
        "alpha_diff_with_graph_guide": difference(cpu_alpha, with_graph_guide),
    }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--mp", default="2,12,25", help="sizes to run, of 2, 12, 25")
    parser.add_argument("--rounds", type=int, default=3)
    # One, as numba's kernels and the service's OpenCV calls: the same core count for both.
    parser.add_argument("--threads", type=int, default=1, help="ORT's intra-op threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    providers = args.providers.split(",")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    graphs = EdgeGraphs(providers, session_options=options)
    guide_session = ort.InferenceSession(
        guide_graph().SerializeToString(), options, providers=providers
    )
    result = {
        "providers": graphs.providers,
        "ort_threads": args.threads,
        "opset": OPSET,
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
        "rows": [measure(graphs, guide_session, int(mp), args.rounds) for mp in args.mp.split(",")],
    }
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
