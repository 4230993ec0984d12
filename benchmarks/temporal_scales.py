"""Smoothing a video's mattes at one scale or two, on benchmarks.temporal's drawn clips.

    python -m benchmarks.temporal_scales [--frames 60] [--no-real] [--out FILE]

"fine": imaging.temporal.TemporalSmoother on the matte the edge step made at the frame's
size (benchmarks.temporal's chosen method). "two scales": imaging.temporal.VideoMattes,
what video jobs run: the same smoother first on the model's own matte on its grid (with
the photo reduced to that grid, history carried along DIS flow), then the edge step, then
"fine". The stand-in's flicker is made on the model's grid (benchmarks.temporal), where the
model's own flicker arises. Also, with the real model on a real photo panned through a
window (nothing is known there but the frames' own mattes): how far each method departs
from them. Writes benchmarks/raw/2026-12-03-temporal-scales.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.drawn_clip import make_clip
from benchmarks.temporal import CLIPS, evaluate, stand_in_small
from bgsvc.imaging.opencv import cv2

RAW = Path(__file__).resolve().parent / "raw" / "2026-12-03-temporal-scales.json"
KEYS = ("dtssd", "dtssd_held", "dtssd_travelling", "mse", "mse_band", "mse_moving")


Method = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


def methods() -> dict[str, Method]:
    """Each method: (frames, mattes on the model's grid) -> mattes at the frame's size."""
    from bgsvc.imaging import edges
    from bgsvc.imaging.temporal import TemporalSmoother, VideoMattes

    def independent(frames: list[np.ndarray], small: list[np.ndarray]) -> list[np.ndarray]:
        return [edges.upscale_matte(m, f) for m, f in zip(small, frames, strict=True)]

    def fine(frames: list[np.ndarray], small: list[np.ndarray]) -> list[np.ndarray]:
        smoother = TemporalSmoother()
        enlarged = independent(frames, small)
        return [smoother.step(f, m) for f, m in zip(frames, enlarged, strict=True)]

    def two_scales(frames: list[np.ndarray], small: list[np.ndarray]) -> list[np.ndarray]:
        mattes = VideoMattes()
        return [
            mattes.fine(f, edges.upscale_matte(mattes.coarse(f, m), f))
            for f, m in zip(frames, small, strict=True)
        ]

    def two_scales_no_flow(frames: list[np.ndarray], small: list[np.ndarray]) -> list[np.ndarray]:
        coarse, after = TemporalSmoother(), TemporalSmoother()
        out = []
        for f, m in zip(frames, small, strict=True):
            grid = cv2.resize(f, m.shape[::-1], interpolation=cv2.INTER_AREA)
            out.append(after.step(f, edges.upscale_matte(coarse.step(grid, m), f)))
        return out

    return {
        "independent frames": independent,
        "fine (one scale)": fine,
        "two scales (video jobs)": two_scales,
        "two scales, no flow on the grid": two_scales_no_flow,
    }


def departures(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    diffs = [np.abs(x.astype(np.int16) - y) for x, y in zip(a, b, strict=True)]
    return {
        "mean": float(np.mean([d.mean() for d in diffs])),
        "worst_frame_mean": float(max(d.mean() for d in diffs)),
        "max": int(max(d.max() for d in diffs)),
    }


def real_pan(frames: int = 12) -> dict[str, Any]:
    """The default model on scikit-image's chelsea panned 3 px a frame through a 320x240
    window: each method's departure from the frames' own mattes."""
    import skimage.data

    from bgsvc.config import Settings
    from bgsvc.imaging.decode import DecodedImage
    from bgsvc.inference.loader import load_engines
    from bgsvc.options import RemovalOptions
    from bgsvc.pipeline import Remover

    settings = Settings(intra_op_threads=2)
    engines = load_engines(settings)
    engine: Any = next(iter(engines.values()))
    remover = Remover(engines, settings)
    options = RemovalOptions()
    photo = skimage.data.chelsea()
    pictures = [
        np.ascontiguousarray(photo[30:270, 60 + 3 * i : 380 + 3 * i]) for i in range(frames)
    ]
    small = []
    for picture in pictures:
        image = DecodedImage(
            pixels=picture,
            alpha=None,
            source_format="VIDEO",
            source_size=(320, 240),
            work_edge=settings.max_edge,
        )
        raw = engine.run(engine.preprocess(image.work_pixels))
        small.append(engine.postprocess(raw, remover.matte_size(image, options)))
    found = {name: method(pictures, small) for name, method in methods().items()}
    alone = found["independent frames"]
    return {name: departures(alone, out) for name, out in found.items() if out is not alone}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--out", type=Path, default=RAW)
    args = parser.parse_args(argv)
    from benchmarks.report import write_json

    started = time.perf_counter()
    results: dict[str, Any] = {"frames": args.frames, "size": [960, 540], "clips": {}}
    for clip_name, held in CLIPS.items():
        clip = make_clip(args.frames, (960, 540), held=held)
        small = list(stand_in_small(clip.alphas))
        rows: dict[str, Any] = {}
        for name, method in methods().items():
            out = method(clip.frames, small)
            row = {k: v for k, v in evaluate(clip, out).items() if not k.startswith("per_frame")}
            rows[name] = row
        base = rows["independent frames"]
        for row in rows.values():
            for k in KEYS:
                if base[k] == base[k] and base[k]:  # NaN where a clip has no held frames
                    row[f"{k}_change_pct"] = 100 * (row[k] / base[k] - 1)
        results["clips"][clip_name] = rows
        print(f"{clip_name}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not args.no_real:
        results["real_pan_departure_levels"] = real_pan()
    write_json(args.out, results)
    for clip_name, rows in results["clips"].items():
        print(f"\n{clip_name}\n")
        print("| method | dtSSD | held | travelling | MSE | MSE where the truth moved |")
        print("|---|---|---|---|---|---|")
        for name, row in rows.items():
            cells = [f"{row['dtssd']:.2f} ({row.get('dtssd_change_pct', 0):+.1f} %)"]
            cells += [f"{row.get(f'{k}_change_pct', float('nan')):+.1f} %" for k in KEYS[1:3]]
            cells += [f"{row['mse']:.3f} ({row.get('mse_change_pct', 0):+.1f} %)"]
            cells += [f"{row.get('mse_moving_change_pct', 0):+.1f} %"]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if "real_pan_departure_levels" in results:
        print("\nreal model, chelsea panned: departure from the frames' own mattes (levels)")
        for name, d in results["real_pan_departure_levels"].items():
            worst = d["worst_frame_mean"]
            print(f"- {name}: mean {d['mean']:.2f}, worst frame {worst:.2f}, max {d['max']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
