"""Temporal smoothing of video mattes, measured on a drawn clip with a known alpha.

    python -m benchmarks.temporal [--frames 60] [--size 960x540] [--no-real] [--out FILE]

A matting model run frame by frame flickers: its answer to each frame is independent of
the last. bgsvc.imaging.temporal smooths the mattes online; this measures what that wins
and what it costs, against clips whose true alpha is known at every frame.

The clips: a head with an anti-aliased outline, blurred shoulders and ~150 curved 1-3 px
strands that sway (each with its own phase) and breathe (+-2 %), over a cluttered
textured background that pans, with fresh sensor grain each frame; composited in float
as I = aF + (1 - a)B, the foreground texture moving with the subject. "held, walks,
held": the subject holds still for a third of the frames, walks across for a third and
holds again (reported apart: held and travelling frame pairs); "travelling throughout":
it walks all along. Deterministic in the seed.

The "models", each enlarged to the frame by the service's own edge step
(edges.upscale_matte, refine on), as a video's frames would be:

- "stand-in": the true alpha area-shrunk to the model's 1024 x 1024, then per frame a
  sub-pixel jitter (sigma 0.35 model px), a smooth error field near the edges (sigma 0.05)
  and white noise (sigma 3 levels): fast, reproducible flicker.
- "perfect small matte": the same without the perturbations. What dtSSD it has moves
  with the subject (the edge step's error pattern): the part no smoother can remove.
- "real": the default model through the service's engine (loaded as the service loads
  it: OpenVINO or ONNX Runtime as the factory chooses), its matte at the model's size.
  Also on two real photos held still with fresh grain, where the truth does not change.

Per frame: SAD (sum |a - g| / 1000) and MSE (x 1000) over the frame and in the unknown
band (true alpha neither 0 nor 1, dilated 3 px), and MSE where the true alpha moved
(|g_t - g_{t-1}| > 0.1: a smear or a ghost shows there). Temporal coherence: dtSSD
(Erofeev et al., "Perceptually Motivated Benchmark for Video Matting", BMVC 2015), per
frame t >= 1 sqrt(sum over pixels of ((a_t - a_{t-1}) - (g_t - g_{t-1}))^2) with alpha in
[0, 1], averaged over the frames; that form sums over the pixels with no normalisation,
so it grows with the frame's size. Also given: the per-pixel RMS form x 100 of later work
(Lin et al.'s RVM evaluation: sqrt(mean(...)) x 100), comparable across sizes. For one
clip the two differ by a constant factor, so relative changes agree. Also checked: with
strength 0 every output equals the independent frame exactly.

Also timed: step() per frame (calling thread's CPU time, median) at the clip's size and
at 1920 x 1080 (the clip enlarged). Writes benchmarks/raw/2026-12-03-temporal.json and
prints Markdown tables. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.drawn_clip import Clip, make_clip
from benchmarks.matting import _noise, unknown_band
from bgsvc.imaging.opencv import cv2

RAW = Path(__file__).resolve().parent / "raw" / "2026-12-03-temporal.json"
MODEL_EDGE = 1024


# -- the two models -------------------------------------------------------------------------


def stand_in_small(
    alphas: list[np.ndarray], seed: int = 0, perturb: bool = True
) -> Iterator[np.ndarray]:
    """The stand-in's mattes on the model's grid, before the edge step: the true alpha
    area-shrunk to it, perturbed afresh each frame unless ``perturb`` is false."""
    for i, alpha in enumerate(alphas):
        rng = np.random.default_rng([seed, 9, i])
        small = cv2.resize(alpha, (MODEL_EDGE, MODEL_EDGE), interpolation=cv2.INTER_AREA)
        if not perturb:
            yield np.round(np.clip(small, 0, 1) * 255).astype(np.uint8)
            continue
        jitter = np.float32([[1, 0, rng.normal(0, 0.35)], [0, 1, rng.normal(0, 0.35)]])
        small = cv2.warpAffine(
            small,
            jitter,
            (MODEL_EDGE, MODEL_EDGE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        soft = ((small > 0.02) & (small < 0.98)).astype(np.float32)
        near_edge = np.clip(cv2.GaussianBlur(soft, (0, 0), 6) * 4, 0, 1)
        field = _noise(rng, (MODEL_EDGE, MODEL_EDGE), 8, 3) * 0.05 / 0.35
        small = small + near_edge * field
        small = small * 255 + rng.normal(0, 3.0, small.shape).astype(np.float32)
        yield np.round(np.clip(small, 0, 255)).astype(np.uint8)


def stand_in_mattes(clip: Clip, seed: int = 0, perturb: bool = True) -> Iterator[np.ndarray]:
    """The true alpha at the model's size, perturbed afresh each frame, enlarged as the
    service enlarges a model's matte. ``perturb=False``: a perfect model, whose dtSSD is
    the part no smoothing can remove (its errors move with the subject)."""
    from bgsvc.imaging import edges

    small = stand_in_small(clip.alphas, seed, perturb)
    for frame, matte in zip(clip.frames, small, strict=True):
        yield edges.upscale_matte(matte, frame)


def load_real() -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """The default model through the service's engine (as the service loads and warms it)
    and its edge step: a function from a frame to its matte at the frame's size."""
    from bgsvc.config import Settings
    from bgsvc.imaging import edges
    from bgsvc.inference.loader import load_engines

    settings = Settings()
    engine = load_engines(settings)[settings.default_model]
    info = {
        "model": settings.default_model,
        "engine": engine.choice.as_dict(),
        "providers": engine.providers,
    }

    def matte_of(frame: np.ndarray) -> np.ndarray:
        matte = engine.postprocess(engine.run(engine.preprocess(frame)), None)
        return edges.upscale_matte(matte, frame, work_edge=settings.max_edge)

    return matte_of, info


# -- metrics --------------------------------------------------------------------------------


def frame_errors(pred: np.ndarray, true: np.ndarray, band: np.ndarray) -> dict[str, float]:
    diff = pred.astype(np.float32) / 255 - true
    sq = diff * diff
    ab = np.abs(diff)
    return {
        "sad": float(ab.sum() / 1000),
        "mse": float(sq.mean() * 1000),
        "sad_band": float(ab[band].sum() / 1000),
        "mse_band": float(sq[band].mean() * 1000),
    }


def dt_ssd(
    pred: np.ndarray, pred_prev: np.ndarray, true: np.ndarray, true_prev: np.ndarray
) -> tuple[float, float]:
    """dtSSD of one frame: the paper's sum form, and the per-pixel RMS x 100 form."""
    d = (pred.astype(np.float32) - pred_prev.astype(np.float32)) / 255 - (true - true_prev)
    ss = float(np.square(d, dtype=np.float64).sum())
    return math.sqrt(ss), math.sqrt(ss / d.size) * 100


def evaluate(clip: Clip, mattes: list[np.ndarray]) -> dict[str, Any]:
    rows = []
    dts, dts_rms, moving, held = [], [], [], []
    for i, (pred, true) in enumerate(zip(mattes, clip.alphas, strict=True)):
        rows.append(frame_errors(pred, true, unknown_band(true)))
        if i:
            a, b = dt_ssd(pred, mattes[i - 1], true, clip.alphas[i - 1])
            dts.append(a)
            dts_rms.append(b)
            held.append(clip.travel[i] == 0 and clip.travel[i - 1] == 0)
            moved = np.abs(true - clip.alphas[i - 1]) > 0.1
            if moved.any():
                e = pred[moved].astype(np.float32) / 255 - true[moved]
                moving.append(float(np.mean(e * e) * 1000))
    out: dict[str, Any] = {
        k: float(np.mean([r[k] for r in rows])) for k in ("sad", "mse", "sad_band", "mse_band")
    }
    out["dtssd"] = float(np.mean(dts))
    out["dtssd_rms_x100"] = float(np.mean(dts_rms))
    held_dts = [d for d, h in zip(dts, held, strict=True) if h]
    travel_dts = [d for d, h in zip(dts, held, strict=True) if not h]
    out["dtssd_held"] = float(np.mean(held_dts)) if held_dts else math.nan
    out["dtssd_travelling"] = float(np.mean(travel_dts)) if travel_dts else math.nan
    out["mse_moving"] = float(np.mean(moving))
    out["per_frame_dtssd"] = dts
    out["per_frame_mse"] = [r["mse"] for r in rows]
    return out


# -- the methods ----------------------------------------------------------------------------


CHOSEN = "chosen: frame difference, photo and matte trust, strength 0.6"
INDEPENDENT = "independent frames"
OFF = "off (strength 0)"


def _smoothers() -> dict[str, Callable[[], Any]]:
    from bgsvc.imaging.temporal import TemporalSmoother

    never = (1e9, 2e9)  # a window nothing reaches: always trusted
    return {
        CHOSEN: lambda: TemporalSmoother(),
        OFF: lambda: TemporalSmoother(0.0),
        "motion-compensated (DIS flow)": lambda: TemporalSmoother(motion=True),
        "strength 0.4": lambda: TemporalSmoother(0.4),
        "strength 0.75": lambda: TemporalSmoother(0.75),
        "matte trust 24-64 levels (bound 15)": lambda: TemporalSmoother(matte_levels=(24, 64)),
        "photo trust 6-18 levels": lambda: TemporalSmoother(trust_levels=(6, 18)),
        "no matte trust (photo residual only; no bound)": (
            lambda: TemporalSmoother(matte_levels=never)
        ),
        "plain running average (no guide, no bound)": (
            lambda: TemporalSmoother(trust_levels=never, matte_levels=never, cut_share=2.0)
        ),
    }


def run_methods(
    clip: Clip, mattes: list[np.ndarray], only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {INDEPENDENT: evaluate(clip, mattes)}
    base = results[INDEPENDENT]
    for name, make in _smoothers().items():
        if only is not None and name not in only:
            continue
        smoother = make()
        out, cpu = [], []
        for frame, matte in zip(clip.frames, mattes, strict=True):
            started = time.thread_time()
            out.append(smoother.step(frame, matte))
            cpu.append(time.thread_time() - started)
        row = evaluate(clip, out)
        if name == OFF:
            row["identical_to_independent"] = all(
                np.array_equal(a, b) for a, b in zip(out, mattes, strict=True)
            )
        row["step_ms_median"] = statistics.median(cpu[2:]) * 1000
        row["cuts"] = smoother.cuts
        row["max_departure_bound"] = smoother.max_departure
        row["max_departure_seen"] = max(
            int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(out, mattes, strict=True)
        )
        for k in (
            "dtssd",
            "dtssd_held",
            "dtssd_travelling",
            "mse",
            "mse_band",
            "mse_moving",
            "sad",
        ):
            row[f"{k}_change_pct"] = 100 * (row[k] / base[k] - 1)
        results[name] = row
    return results


def cost_1080p(clip: Clip, mattes: list[np.ndarray], frames: int = 24) -> dict[str, float]:
    """CPU ms per step (median, after two frames) on the clip enlarged to 1920 x 1080."""
    from bgsvc.imaging.temporal import TemporalSmoother

    size = (1920, 1080)
    big = [
        (
            cv2.resize(f, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(m, size, interpolation=cv2.INTER_LINEAR),
        )
        for f, m in zip(clip.frames[:frames], mattes[:frames], strict=True)
    ]
    out: dict[str, float] = {}
    for name, make in (
        ("chosen (frame difference)", lambda: TemporalSmoother()),
        ("motion-compensated (DIS flow)", lambda: TemporalSmoother(motion=True)),
    ):
        for _ in range(2):  # the second pass is the one kept: caches and branch history warm
            smoother = make()
            cpu = []
            for f, m in big:
                started = time.thread_time()
                smoother.step(f, m)
                cpu.append(time.thread_time() - started)
        out[name] = statistics.median(cpu[2:]) * 1000
    return out


def still_photo_flicker(
    matte_of: Callable[[np.ndarray], np.ndarray], frames: int = 20
) -> dict[str, Any]:
    """The real model on real photos held still, with fresh sensor grain (sigma 2 levels)
    each frame: the true alpha is unknown but does not change, so dtSSD needs no truth
    (g_t - g_{t-1} = 0) and every change of the matte is flicker."""
    from PIL import Image

    from benchmarks.images import sample
    from bgsvc.imaging.temporal import TemporalSmoother

    out: dict[str, Any] = {}
    for name in ("astronaut", "chelsea"):
        photo = sample(name).convert("RGB")
        scale = 960 / max(photo.size)
        photo = photo.resize(
            (round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC
        )
        base = np.asarray(photo, dtype=np.float32)
        clip = []
        for i in range(frames):
            grain = np.random.default_rng([11, i]).normal(0, 2.0, base.shape)
            clip.append(np.round(np.clip(base + grain, 0, 255)).astype(np.uint8))
        mattes = [matte_of(f) for f in clip]
        rows: dict[str, Any] = {}
        for label, make in (
            (INDEPENDENT, None),
            (CHOSEN, lambda: TemporalSmoother()),
            ("motion-compensated (DIS flow)", lambda: TemporalSmoother(motion=True)),
        ):
            if make is None:
                seq = mattes
            else:
                smoother = make()
                seq = [smoother.step(f, m) for f, m in zip(clip, mattes, strict=True)]
            steps = [
                math.sqrt(float(np.square((a.astype(np.float32) - b) / 255).sum()))
                for a, b in zip(seq[1:], seq[:-1], strict=True)
            ]
            rows[label] = {
                "dtssd": float(np.mean(steps)),
                "mean_abs_departure": float(
                    np.mean(
                        [
                            np.abs(a.astype(np.int16) - b).mean()
                            for a, b in zip(seq, mattes, strict=True)
                        ]
                    )
                ),
                "max_departure_seen": max(
                    int(np.abs(a.astype(np.int16) - b).max())
                    for a, b in zip(seq, mattes, strict=True)
                ),
            }
        indep = rows[INDEPENDENT]["dtssd"]
        for row in rows.values():
            row["dtssd_change_pct"] = 100 * (row["dtssd"] / indep - 1) if indep else math.nan
        out[f"{name} {photo.width}x{photo.height}"] = rows
    return out


# -- the run --------------------------------------------------------------------------------


def _pct(row: dict[str, Any], key: str) -> str:
    value = row.get(f"{key}_change_pct")
    return "-" if value is None or math.isnan(value) else f"{value:+.1f}%"


def _print(results: dict[str, Any]) -> None:
    from benchmarks.report import markdown_table

    for key, block in results["runs"].items():
        print(f"\n{key}\n")
        table = []
        for name, r in block["methods"].items():
            table.append(
                [
                    name,
                    r["dtssd"],
                    _pct(r, "dtssd"),
                    _pct(r, "dtssd_held"),
                    _pct(r, "dtssd_travelling"),
                    r["mse"],
                    _pct(r, "mse"),
                    _pct(r, "mse_band"),
                    _pct(r, "mse_moving"),
                    r.get("max_departure_seen"),
                    r.get("step_ms_median"),
                ]
            )
        print(
            markdown_table(
                [
                    "method",
                    "dtSSD",
                    "dtSSD",
                    "held",
                    "travelling",
                    "MSE x1000",
                    "MSE",
                    "MSE band",
                    "MSE moving",
                    "max dep",
                    "step ms",
                ],
                table,
            )
        )
        if "cost_1080p_ms" in block:
            print("\n1080p step, CPU ms:", block["cost_1080p_ms"])
    for photo, rows in (results.get("real_photos_held_still") or {}).items():
        print(f"\nreal model, {photo} held still with fresh grain\n")
        print(
            markdown_table(
                ["method", "dtSSD (all flicker)", "dtSSD", "mean |dep|", "max dep"],
                [
                    [
                        k,
                        r["dtssd"],
                        _pct(r, "dtssd"),
                        r["mean_abs_departure"],
                        r["max_departure_seen"],
                    ]
                    for k, r in rows.items()
                ],
            )
        )


def _parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


CLIPS = {"held, walks, held": True, "travelling throughout": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=_parse_size, default=(960, 540))
    parser.add_argument("--no-real", action="store_true", help="only the stand-in model")
    parser.add_argument("--out", type=Path, default=RAW)
    args = parser.parse_args(argv)

    from benchmarks.report import write_json

    started = time.perf_counter()
    real: tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]] | None = None
    if not args.no_real:
        real = load_real()
    runs: dict[str, Any] = {}
    clips: dict[str, Any] = {}
    still: dict[str, Any] | None = None
    if real is not None:
        still = still_photo_flicker(real[0])
    for clip_name, held in CLIPS.items():
        clip = make_clip(args.frames, args.size, held=held)
        clips[clip_name] = {
            "held_frames": sum(1 for v in clip.travel if v == 0),
            "band_fraction": float(np.mean([unknown_band(a).mean() for a in clip.alphas])),
        }
        stand_in = list(stand_in_mattes(clip))
        block: dict[str, Any] = {"methods": run_methods(clip, stand_in)}
        if held:
            block["cost_1080p_ms"] = cost_1080p(clip, stand_in)
        runs[f"{clip_name} / stand-in"] = block
        perfect = list(stand_in_mattes(clip, perturb=False))
        runs[f"{clip_name} / perfect small matte (the floor)"] = {
            "methods": run_methods(clip, perfect, only=(CHOSEN, OFF))
        }
        if real is not None:
            matte_of, info = real
            t0 = time.perf_counter()
            mattes = [matte_of(f) for f in clip.frames]
            info[f"seconds, {clip_name}"] = time.perf_counter() - t0
            block = {"info": info, "methods": run_methods(clip, mattes)}
            if held:
                block["cost_1080p_ms"] = cost_1080p(clip, mattes)
            runs[f"{clip_name} / real model ({info['model']})"] = block
        print(f"{clip_name}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
    results: dict[str, Any] = {
        "environment": {
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "cpu": platform.machine(),
            "threads": "1 (OpenCV, numba)",
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "clips": {"frames": args.frames, "size": list(args.size), **clips},
        "dtssd_definition": (
            "mean over frames t >= 1 of sqrt(sum_px ((a_t - a_{t-1}) - (g_t - g_{t-1}))^2), "
            "alpha in [0, 1] (Erofeev et al. 2015); dtssd_rms_x100: sqrt(mean_px(...)) x 100 "
            "(Lin et al.'s RVM evaluation); held/travelling: over the frame pairs where the "
            "subject holds still / travels"
        ),
        "runs": runs,
        "real_photos_held_still": still,
    }
    write_json(args.out, results)
    _print(results)
    print(f"\nwrote {args.out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
