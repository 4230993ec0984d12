"""The colour step on a real photo: scikit-image's chelsea put on pure green (and on
another photo, scikit-image's coffee) with the default model's own matte, so that the
answer is known where the matte is soft.

    .venv/bin/python -m benchmarks.matting_real [--megapixels 2,12]

benchmarks/matting.py measures the edge step on drawn composites; this checks that what
it chose does not only suit them. The photo is enlarged to each size, the model's matte is
made and enlarged as the service does (refine on), and the photo is composited over pure
green through it in float, I = aF + (1 - a)G: the foreground F is the photo itself. The
same over the coffee photo checks a background with detail of its own. Each
colour method then estimates F from I and that matte. Reported where 0.05 < alpha < 0.95:
the colour error (mean absolute, 0-255 levels) and the green cast, the mean of
G - (R + B) / 2, of the estimate against the photo's own. Writes
benchmarks/raw/2026-12-03-matting-real.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.images import upscaled_jpeg
from benchmarks.matting import _ml_without_prior

RAW = Path(__file__).resolve().parent / "raw" / "2026-12-03-matting-real.json"
GREEN = np.array([0, 255, 0], np.float32)


def _green_cast(rgb: np.ndarray) -> float:
    px = rgb.astype(np.float32)
    return float((px[:, 1] - (px[:, 0] + px[:, 2]) / 2).mean())


def methods() -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    from bgsvc.imaging import edges

    return {
        "none (the composite's colour)": lambda im, a: im,
        "before: pymatting's multilevel + full-res step": (
            lambda im, a: _ml_without_prior(im, a, pymatting=True)
        ),
        "chosen: multilevel with the clear background as B's prior + full-res step": (
            edges.decontaminate
        ),
    }


def _backdrop(kind: str, size: tuple[int, int]) -> np.ndarray:
    if kind == "green":
        return np.broadcast_to(GREEN, (size[1], size[0], 3))
    from benchmarks.images import sample

    return np.asarray(sample(kind).resize(size, Image.Resampling.BICUBIC), np.float32)


def measure(remover: Any, options_type: Any, megapixels: float, backdrop: str) -> dict[str, Any]:
    photo = upscaled_jpeg("chelsea", megapixels)
    result = remover.remove(photo.data, options_type(channels="alpha", refine=True))
    matte = np.asarray(Image.open(io.BytesIO(result.output.body)).convert("L"), np.uint8)
    fg = np.asarray(Image.open(io.BytesIO(photo.data)).convert("RGB"), np.uint8)
    a = (matte.astype(np.float32) / 255)[..., None]
    bg = _backdrop(backdrop, (photo.width, photo.height))
    composite = np.round(a * fg + (1 - a) * bg).astype(np.uint8)
    band = (a[..., 0] > 0.05) & (a[..., 0] < 0.95)
    rows: dict[str, Any] = {}
    for name, fn in methods().items():
        started = time.process_time()
        est = fn(composite, matte)
        cpu_ms = (time.process_time() - started) * 1000
        rows[name] = {
            "colour_error": float(np.abs(est[band].astype(np.int16) - fg[band]).mean()),
            "green_cast": _green_cast(est[band]),
            "cpu_ms": cpu_ms,
        }
    return {
        "size": [photo.width, photo.height],
        "soft_fraction": float(band.mean()),
        "photo_green_cast": _green_cast(fg[band]),
        "methods": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", default="2,12")
    parser.add_argument("--out", type=Path, default=RAW)
    args = parser.parse_args(argv)

    from benchmarks.report import markdown_table, write_json
    from bgsvc.config import Settings
    from bgsvc.inference.loader import load_engines
    from bgsvc.options import RemovalOptions
    from bgsvc.pipeline import Remover

    settings = Settings()
    remover = Remover(dict(load_engines(settings)), settings)
    runs = {
        f"{mp:g} MP on {backdrop}": measure(remover, RemovalOptions, mp, backdrop)
        for backdrop in ("green", "coffee")
        for mp in (float(v) for v in args.megapixels.split(","))
    }
    write_json(args.out, {"date": time.strftime("%Y-%m-%d %H:%M"), "runs": runs})
    table = []
    for size, run in runs.items():
        for name, row in run["methods"].items():
            table.append(
                [size, name, row["colour_error"], row["green_cast"], run["photo_green_cast"]]
            )
    print(
        markdown_table(
            ["size", "method", "colour error", "green cast", "the photo's own cast"], table
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
