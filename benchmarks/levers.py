"""One measurement per lever, interleaved A/B so a busy neighbour hurts every variant alike.

    python -m benchmarks.levers [--quick] [LEVER ...]

Levers: model (fp16 vs fp32, optimised-graph cache), threads (intra-op threads, spinning,
1x2 vs 2x1), prepost (pre/post-processing, compositing), png, webp, int8, openvino.
Each writes benchmarks/out/levers/<lever>.json; RESULTS.md quotes them. Timings report
the minimum (least disturbed by other load) and the median of the interleaved rounds.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.images import CALIBRATION, FULL_SET, HELD_OUT, build_set, sample
from benchmarks.load import process_throughput

OUT = Path(__file__).resolve().parent / "out"
MODEL_DIR = Path(os.environ.get("BGSVC_MODEL_DIR", Path.home() / ".cache" / "bgsvc" / "models"))
MODEL = MODEL_DIR / "imgly-medium.onnx"


def interleaved(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, Any]:
    """Run each variant once per round, in turn; min/median seconds per variant."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {
        name: {"min": min(ts), "median": statistics.median(ts), "runs": ts}
        for name, ts in times.items()
    }


def _save(name: str, result: dict[str, Any]) -> None:
    path = OUT / "levers" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=1, default=str))


def _session(path: Path, threads: int = 2, spinning: bool = False, level: str = "all") -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def photo_tensor(name: str = "chelsea", size: int = 1024) -> np.ndarray:
    """A real photo as the imgly profile's input tensor."""
    img = sample(name).resize((size, size), Image.Resampling.BILINEAR)
    arr = (np.asarray(img, dtype=np.float32) - 128.0) / 256.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def iou(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of the foreground (value > threshold) of two mattes in [0, 1]."""
    fa, fb = a > threshold, b > threshold
    union = np.logical_or(fa, fb).sum()
    return float(np.logical_and(fa, fb).sum() / union) if union else 1.0


def fp32_model() -> Path:
    """The float32 copy the service would run (made here once, beside the other outputs)."""
    made = sorted((OUT / "prepared").glob("imgly-medium-*-fp32.onnx"))
    if made:
        # Also lets the OpenVINO lever run from a venv without bgsvc's dependencies.
        return made[0]
    from bgsvc.inference import prepare

    key = prepare.source_key(MODEL, None)
    return prepare.fp32_copy(MODEL, key, OUT / "prepared")


# -- model: fp16 vs fp32, optimised graph cached -------------------------------------------


def lever_model(rounds: int) -> None:
    from bgsvc.inference import prepare

    started = time.perf_counter()
    scratch = OUT / "prepared" / "convert-timing.onnx"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    prepare.convert_fp16_to_fp32(MODEL, scratch)
    convert_s = time.perf_counter() - started
    scratch.unlink()
    fp32 = fp32_model()
    x = photo_tensor()

    def load(path: Path, level: str = "all", save: Path | None = None) -> tuple[Any, float]:
        import onnxruntime as ort

        t0 = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.log_severity_level = 3
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[level]
        if save is not None:
            options.optimized_model_filepath = str(save)
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sess, time.perf_counter() - t0

    optimized = OUT / "prepared" / "fp32-opt.onnx"
    optimized.unlink(missing_ok=True)
    load(fp32, "all", optimized)
    sessions: dict[str, Any] = {}
    load_times: dict[str, list[float]] = {"fp16 ALL": [], "fp32 ALL": [], "fp32 cached-opt": []}
    for _ in range(3):
        sessions["fp16 ALL"], t = load(MODEL)
        load_times["fp16 ALL"].append(t)
        sessions["fp32 ALL"], t = load(fp32)
        load_times["fp32 ALL"].append(t)
        sessions["fp32 cached-opt"], t = load(optimized, "none")
        load_times["fp32 cached-opt"].append(t)
    outputs = {name: s.run(["output"], {"input": x})[0] for name, s in sessions.items()}
    runs = interleaved(
        {name: (lambda s=s: s.run(["output"], {"input": x})) for name, s in sessions.items()},
        rounds,
    )
    ref = outputs["fp16 ALL"]
    _save(
        "model",
        {
            "convert_fp16_to_fp32_s": convert_s,
            "load_s_min": {k: min(v) for k, v in load_times.items()},
            "run_s": {k: {"min": v["min"], "median": v["median"]} for k, v in runs.items()},
            "max_abs_diff_vs_fp16": {k: float(np.abs(v - ref).max()) for k, v in outputs.items()},
            "iou_vs_fp16": {k: iou(v, ref) for k, v in outputs.items()},
            "raw": runs,
        },
    )


# -- threads, spinning and process layout --------------------------------------------------


def _worker(path: str, threads: int, n: int, barrier: Any, out: Any) -> None:
    sess = _session(Path(path), threads)
    x = photo_tensor()
    sess.run(["output"], {"input": x})
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(n):
        sess.run(["output"], {"input": x})
    out.put(time.perf_counter() - t0)


def _parallel(path: Path, procs: int, threads: int, n: int) -> float:
    """Images/s of ``procs`` processes, each running ``n`` inferences with ``threads``."""
    return process_throughput(_worker, (str(path), threads), procs, n)


def lever_threads(rounds: int) -> None:
    fp32 = fp32_model()
    x = photo_tensor()
    variants: dict[str, Callable[[], object]] = {}
    for threads in (1, 2):
        for spin in (False, True):
            s = _session(fp32, threads, spin)
            s.run(["output"], {"input": x})
            variants[f"{threads}t spin={'on' if spin else 'off'}"] = lambda s=s: s.run(
                ["output"], {"input": x}
            )
    runs = interleaved(variants, rounds)
    # Idle cost of spinning: CPU seconds burnt by a session right after a run.
    idle: dict[str, float] = {}
    for spin in (False, True):
        s = _session(fp32, 2, spin)
        s.run(["output"], {"input": x})
        t0 = time.process_time()
        s.run(["output"], {"input": x})
        busy = time.process_time() - t0
        t1 = time.process_time()
        time.sleep(1.0)
        idle[f"spin={'on' if spin else 'off'}"] = time.process_time() - t1
        idle[f"spin={'on' if spin else 'off'} run cpu s"] = busy
    n = max(2, rounds // 2)
    layout: dict[str, list[float]] = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    for _ in range(2):
        layout["1 process x 2 threads"].append(_parallel(fp32, 1, 2, n))
        layout["2 processes x 1 thread"].append(_parallel(fp32, 2, 1, n))
    _save(
        "threads",
        {
            "run_s": {k: {"min": v["min"], "median": v["median"]} for k, v in runs.items()},
            "idle_cpu_s_per_s_after_run": idle,
            "bare_throughput_img_s": {k: {"max": max(v), "all": v} for k, v in layout.items()},
            "raw": runs,
        },
    )


# -- pre/post-processing and compositing ---------------------------------------------------


def _old_preprocess(rgb: Image.Image, size: int = 1024) -> np.ndarray:
    # The service's previous preprocess, kept here as the baseline.
    resized = rgb.resize((size, size), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32)
    tensor = np.empty((1, 3, size, size), dtype=np.float32)
    for c in range(3):
        np.subtract(pixels[:, :, c], 128.0, out=tensor[0, c])
        tensor[0, c] *= 1 / 256
    return tensor


def _old_postprocess(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    pred = np.asarray(raw, dtype=np.float32).reshape(raw.shape[-2], raw.shape[-1])
    matte = Image.fromarray(pred, "F").resize(size, Image.BILINEAR)
    out = np.asarray(matte, dtype=np.float32) * 255.0 + 0.5
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


def _old_render(rgb: Image.Image, mask: np.ndarray) -> Image.Image:
    pixels = np.dstack([np.asarray(rgb), mask])
    pixels[mask == 0, :3] = 0
    return Image.fromarray(pixels, "RGBA")


def lever_prepost(rounds: int) -> None:
    from bgsvc.config import Settings
    from bgsvc.imaging.compose import cutout
    from bgsvc.imaging.decode import DecodeLimits, decode
    from bgsvc.inference.engine import Engine
    from bgsvc.inference.registry import BUILTIN

    spec = BUILTIN["imgly-medium"]
    # The stages without a session: an Engine over a stub is all preprocess needs.
    from tests.models import StubSession

    engine = Engine(spec, StubSession(1024), 0.0)  # type: ignore[arg-type]
    limits = DecodeLimits(frozenset(Settings().allowed_formats), 50_000_000, 2048)
    results: dict[str, Any] = {}
    images = build_set(FULL_SET, OUT / "images", duplicates=0)
    raw = np.random.default_rng(0).random((1, 1, 1024, 1024), dtype=np.float32)
    for image in sorted(images, key=lambda im: im.megapixels)[::2]:
        decoded = decode(image.data, limits)
        rgb = decoded.rgb
        mask = engine.postprocess(raw, rgb.size).copy()
        mask[: rgb.height // 3] = 0  # a fully transparent band, as real cutouts have
        runs = interleaved(
            {
                "preprocess old": lambda rgb=rgb: _old_preprocess(rgb),
                "preprocess new": lambda rgb=rgb: engine.preprocess(rgb),
                "postprocess old": lambda rgb=rgb: _old_postprocess(raw, rgb.size),
                "postprocess new": lambda rgb=rgb: engine.postprocess(raw, rgb.size),
                "composite old": lambda rgb=rgb, m=mask: _old_render(rgb, m),
                "composite new": lambda rgb=rgb, m=mask: cutout(rgb, m),
            },
            rounds,
        )
        old_pre, new_pre = _old_preprocess(rgb), engine.preprocess(rgb)
        old_post = _old_postprocess(raw, rgb.size)
        new_post = engine.postprocess(raw, rgb.size)
        results[f"{image.name} {rgb.width}x{rgb.height}"] = {
            **{
                k: {"min_ms": v["min"] * 1000, "median_ms": v["median"] * 1000}
                for k, v in runs.items()
            },
            "preprocess max abs diff": float(np.abs(old_pre - new_pre).max()),
            "preprocess new resize+normalise split": {
                "resize_ms": _ms(lambda rgb=rgb: rgb.resize((1024, 1024), Image.BILINEAR)),
            },
            "postprocess max level diff": int(
                np.abs(old_post.astype(int) - new_post.astype(int)).max()
            ),
            "composite identical": bool(
                np.array_equal(np.asarray(_old_render(rgb, mask)), np.asarray(cutout(rgb, mask)))
            ),
        }
    _save("prepost", results)


def _ms(fn: Callable[[], object], rounds: int = 5) -> float:
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000


# -- encoders ------------------------------------------------------------------------------


def _cutout_image(megapixels: float = 2.0) -> Image.Image:
    """A realistic RGBA cutout: a photo with a soft elliptical matte, zeroed outside."""
    from benchmarks.images import size_for

    src = sample("chelsea")
    img = src.resize(size_for(src.width / src.height, megapixels), Image.Resampling.LANCZOS)
    w, h = img.size
    yy, xx = np.mgrid[0:h, 0:w]
    d = ((xx - w / 2) / (w * 0.35)) ** 2 + ((yy - h / 2) / (h * 0.4)) ** 2
    alpha = np.clip((1.15 - d) * 6 * 255, 0, 255).astype(np.uint8)
    rgba = np.dstack([np.asarray(img), alpha])
    rgba[alpha == 0, :3] = 0
    return Image.fromarray(rgba, "RGBA")


def _encoded_size(img: Image.Image, fmt: str, **params: Any) -> int:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.tell()


def lever_png(rounds: int) -> None:
    img = _cutout_image()
    import zlib

    variants = {
        f"level {lvl}": (lambda lvl=lvl: _encoded_size(img, "PNG", compress_level=lvl))
        for lvl in range(10)
    }
    # zlib's run-length strategy suits filtered photo rows with transparent runs.
    for lvl in (1, 2, 3):
        variants[f"level {lvl} Z_RLE"] = lambda lvl=lvl: _encoded_size(
            img, "PNG", compress_level=lvl, compress_type=zlib.Z_RLE
        )
    import fpng

    # fpng: its own fast deflate (no zlib level), lossless like the rest.
    variants["fpng"] = lambda: len(fpng.from_pil(img))
    runs = interleaved(variants, rounds)
    sizes = {k: fn() for k, fn in variants.items()}
    _save(
        "png",
        {
            "image": f"{img.width}x{img.height} RGBA cutout of a photo",
            "levels": {
                k: {"min_ms": runs[k]["min"] * 1000, "kib": sizes[k] / 1024} for k in variants
            },
        },
    )


def lever_webp(rounds: int) -> None:
    img = _cutout_image()
    variants: dict[str, Callable[[], int]] = {}
    for method in range(7):
        variants[f"lossy q90 m{method}"] = lambda m=method: _encoded_size(
            img, "WEBP", quality=90, alpha_quality=100, method=m
        )
    for method in (0, 1, 4, 6):
        variants[f"lossless m{method}"] = lambda m=method: _encoded_size(
            img, "WEBP", lossless=True, quality=0 if m < 2 else 75, method=m
        )
    runs = interleaved(variants, rounds)
    sizes = {k: fn() for k, fn in variants.items()}
    _save(
        "webp",
        {
            "image": f"{img.width}x{img.height} RGBA cutout of a photo",
            "variants": {
                k: {"min_ms": runs[k]["min"] * 1000, "kib": sizes[k] / 1024} for k in variants
            },
        },
    )


# -- int8 static QDQ -----------------------------------------------------------------------


def quantize_int8(target: Path) -> float:
    """Static QDQ int8 copy of the fp32 model calibrated on real photos (the service's
    own quantiser); returns seconds."""
    from bgsvc.inference.quantize import quantize_qdq
    from bgsvc.inference.registry import PROFILES

    started = time.perf_counter()
    tensors = [photo_tensor(name) for name in CALIBRATION]
    del PROFILES  # the imgly profile is what photo_tensor applies
    quantize_qdq(fp32_model(), target, tensors)
    return time.perf_counter() - started


def lever_int8(rounds: int) -> None:
    target = OUT / "prepared" / "imgly-medium-int8-qdq.onnx"
    quant_s = quantize_int8(target) if not target.is_file() else float("nan")
    fp32 = _session(fp32_model())
    int8 = _session(target)
    x = photo_tensor()
    runs = interleaved(
        {
            "fp32": lambda: fp32.run(["output"], {"input": x}),
            "int8": lambda: int8.run(["output"], {"input": x}),
        },
        rounds,
    )
    ious = {}
    for name in HELD_OUT:
        t = photo_tensor(name)
        a = fp32.run(["output"], {"input": t})[0]
        b = int8.run(["output"], {"input": t})[0]
        ious[name] = iou(a, b)
    speedup = runs["fp32"]["min"] / runs["int8"]["min"]
    keep = speedup >= 1.25 and min(ious.values()) >= 0.98
    _save(
        "int8",
        {
            "quantize_s": quant_s,
            "calibration_photos": CALIBRATION,
            "held_out_photos": HELD_OUT,
            "run_s": {k: {"min": v["min"], "median": v["median"]} for k, v in runs.items()},
            "speedup_min": speedup,
            "iou_alpha_gt_0.5": ious,
            "keep": keep,
        },
    )


# -- OpenVINO EP (run with an interpreter that has onnxruntime-openvino) --------------------


def lever_openvino(rounds: int) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    result: dict[str, Any] = {"onnxruntime": ort.__version__, "available": available}
    if "OpenVINOExecutionProvider" not in available:
        result["error"] = "OpenVINOExecutionProvider not in this onnxruntime build"
        _save("openvino", result)
        return
    fp32 = fp32_model()
    x = photo_tensor()
    cpu = _session(fp32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    t0 = time.perf_counter()
    try:
        ov = ort.InferenceSession(
            str(fp32),
            options,
            providers=["OpenVINOExecutionProvider"],
            provider_options=[{"device_type": "CPU", "num_of_threads": "2"}],
        )
        ov.run(["output"], {"input": x})
    except Exception as exc:  # report whatever the EP says, this is a measurement
        result["error"] = f"{type(exc).__name__}: {exc}"
        _save("openvino", result)
        return
    result["first_run_incl_compile_s"] = time.perf_counter() - t0
    result["session_providers"] = ov.get_providers()
    runs = interleaved(
        {
            "cpu ep": lambda: cpu.run(["output"], {"input": x}),
            "openvino ep": lambda: ov.run(["output"], {"input": x}),
        },
        rounds,
    )
    a = cpu.run(["output"], {"input": x})[0]
    b = ov.run(["output"], {"input": x})[0]
    result |= {
        "run_s": {k: {"min": v["min"], "median": v["median"]} for k, v in runs.items()},
        "speedup_min": runs["cpu ep"]["min"] / runs["openvino ep"]["min"],
        "iou_vs_cpu": iou(a, b),
        "max_abs_diff_vs_cpu": float(np.abs(a - b).max()),
    }
    _save("openvino", result)


LEVERS: dict[str, Callable[[int], None]] = {
    "model": lever_model,
    "threads": lever_threads,
    "prepost": lever_prepost,
    "png": lever_png,
    "webp": lever_webp,
    "int8": lever_int8,
    "openvino": lever_openvino,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("levers", nargs="*", help=f"any of: {', '.join(LEVERS)}")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    chosen = args.levers or [k for k in LEVERS if k != "openvino"]
    unknown = [k for k in chosen if k not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    for name in chosen:
        rounds = args.rounds or (
            3 if args.quick else {"png": 5, "webp": 5, "prepost": 7}.get(name, 6)
        )
        print(f"== {name} ({rounds} rounds)", flush=True)
        LEVERS[name](rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
