"""The CPU stages around the model, measured in-process on 2 MP photos with real mattes.

    python -m benchmarks.lean [--rounds N] [stages] [webp] [gil] [edges]

stages: decode, compose (combine_alpha + render) and encode per output format;
webp: libwebp's method x quality x alpha_quality trade (time, size, fidelity);
gil: whether the PNG writer lets a second thread run (two threads encoding at once);
edges: the edge step (the matte's guided enlargement and the colour estimate) from the
model's own 1024 x 1024 matte, wall time on one thread and in bands with one helper, as a
request alone in its process runs it (bgsvc.imaging.bands).

Mattes come from the real default model (one forward per photo, cached as PNG in
benchmarks/out/lean/mattes), so the cutouts have real soft edges and transparent areas.
Times are the calling thread's CPU time (time.thread_time: least disturbed by other load
on a shared machine), min and median over interleaved rounds. Writes
benchmarks/out/lean/<part>.json and prints Markdown tables; nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.images import BenchImage, build_set
from benchmarks.report import markdown_table

OUT = Path(__file__).resolve().parent / "out"
PHOTOS: tuple[tuple[str, float], ...] = (("coffee", 2.0), ("astronaut", 2.0), ("rocket", 2.0))


def cpu_ms(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.thread_time()
    result = fn()
    return result, (time.thread_time() - started) * 1000


def photos() -> list[tuple[BenchImage, np.ndarray]]:
    """The 2 MP bench photos with the default model's matte for each (cached)."""
    images = build_set(PHOTOS, OUT / "images", duplicates=0)
    cache = OUT / "lean" / "mattes"
    cache.mkdir(parents=True, exist_ok=True)
    missing = [im for im in images if not (cache / f"{im.name}.png").is_file()]
    if missing:
        from bgsvc.config import Settings
        from bgsvc.imaging.decode import DecodeLimits, decode
        from bgsvc.inference.loader import load_engines

        settings = Settings()
        engine = load_engines(settings)[settings.default_model]
        limits = DecodeLimits(frozenset({"JPEG"}), settings.max_pixels, settings.max_edge)
        for im in missing:
            mask = engine.predict(decode(im.data, limits).rgb)
            Image.fromarray(mask, "L").save(cache / f"{im.name}.png")
    out = []
    for im in images:
        with Image.open(cache / f"{im.name}.png") as matte:
            out.append((im, np.array(matte)))
    return out


def model_mattes() -> list[tuple[BenchImage, np.ndarray, np.ndarray]]:
    """The 2 MP bench photos, their decoded pixels, and the default model's matte at the
    model's own size, as the edge step receives it (cached)."""
    from bgsvc.imaging.decode import DecodeLimits, decode

    images = build_set(PHOTOS, OUT / "images", duplicates=0)
    cache = OUT / "lean" / "model-mattes"
    cache.mkdir(parents=True, exist_ok=True)
    limits = DecodeLimits(frozenset({"JPEG"}), 50_000_000, 2048)
    decoded = [decode(im.data, limits) for im in images]
    missing = [im for im in images if not (cache / f"{im.name}.png").is_file()]
    if missing:
        from bgsvc.config import Settings
        from bgsvc.inference.loader import load_engines

        settings = Settings()
        engine = load_engines(settings)[settings.default_model]
        for im, image in zip(images, decoded, strict=True):
            if im in missing:
                raw = engine.run(engine.preprocess(image.work_pixels))
                matte = engine.postprocess(raw, None)
                Image.fromarray(matte, "L").save(cache / f"{im.name}.png")
    out = []
    for im, image in zip(images, decoded, strict=True):
        with Image.open(cache / f"{im.name}.png") as matte:
            out.append((im, image.pixels, np.array(matte)))
    return out


def _edge_step(
    matte: np.ndarray, pixels: np.ndarray, pool: Executor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The matte enlarged and the colour estimated, in bands when given a pool."""
    from bgsvc.imaging import bands
    from bgsvc.imaging import edges as step

    with bands.spread(pool, 1):
        alpha = step.upscale_matte(matte, pixels)
        return alpha, step.decontaminate(pixels, alpha)


def edges(rounds: int) -> dict[str, Any]:
    """The edge step's wall time on the calling thread alone and in bands with one helper
    thread, interleaved, min and median; and whether both give the same bytes."""
    from bgsvc.imaging import edges as step

    step.preload()
    rows = []
    with ThreadPoolExecutor(1) as pool:
        for im, pixels, matte in model_mattes():
            run = partial(_edge_step, matte, pixels)
            banded = partial(_edge_step, matte, pixels, pool)
            times: dict[str, list[float]] = {"alone": [], "bands": []}
            results = {}
            for _ in range(rounds):
                for name, fn in (("alone", run), ("bands", banded)):
                    started = time.perf_counter()
                    results[name] = fn()
                    times[name].append((time.perf_counter() - started) * 1000)
            same = all(
                np.array_equal(a, b)
                for a, b in zip(results["alone"], results["bands"], strict=True)
            )
            rows.append(
                [
                    f"{im.name} {im.width}x{im.height}",
                    min(times["alone"]),
                    statistics.median(times["alone"]),
                    min(times["bands"]),
                    statistics.median(times["bands"]),
                    same,
                ]
            )
    headers = [
        "photo",
        "alone min ms",
        "alone median ms",
        "2 bands min ms",
        "2 bands median ms",
        "same bytes",
    ]
    return {"rounds": rounds, "table": {"headers": headers, "rows": rows}}


def stages(rounds: int) -> dict[str, Any]:
    from bgsvc.imaging.compose import combine_alpha, render
    from bgsvc.imaging.decode import DecodeLimits, decode
    from bgsvc.imaging.encode import EncodeSettings, encode
    from bgsvc.options import RemovalOptions

    limits = DecodeLimits(frozenset({"JPEG", "PNG", "WEBP", "GIF"}), 50_000_000, 2048)
    settings = EncodeSettings()
    rows = []
    for im, mask in photos():
        for fmt in ("png", "webp", "jpg"):
            options = RemovalOptions(format=fmt)
            times: dict[str, list[float]] = {"decode": [], "compose": [], "encode": []}
            size = 0
            for _ in range(rounds):
                t0 = time.thread_time()
                image = decode(im.data, limits)
                t1 = time.thread_time()
                rendered = render(image.rgb, combine_alpha(mask, image.alpha), options)
                t2 = time.thread_time()
                body = encode(rendered.image, rendered.format, None, settings)
                t3 = time.thread_time()
                for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    times[key].append(seconds * 1000)
                size = len(body)
            total = [sum(t) for t in zip(*times.values(), strict=True)]
            rows.append(
                [
                    f"{im.name} {im.width}x{im.height}",
                    fmt,
                    *(statistics.median(t) for t in times.values()),
                    statistics.median(total),
                    min(total),
                    size / 1024,
                ]
            )
    headers = [
        "photo",
        "format",
        "decode ms",
        "compose ms",
        "encode ms",
        "total median ms",
        "total min ms",
        "KiB",
    ]
    return {"rounds": rounds, "table": {"headers": headers, "rows": rows}}


def _cutout(rgb: Image.Image, mask: np.ndarray) -> Image.Image:
    from bgsvc.imaging.compose import cutout

    return cutout(rgb, mask)


def _fidelity(src: np.ndarray, body: bytes) -> tuple[float, float, float, int]:
    """PSNR and SSIM of the visible colour (RGB premultiplied by alpha, where the source
    alpha > 0), and the alpha's mean and max absolute error."""
    from skimage.metrics import structural_similarity

    with Image.open(io.BytesIO(body)) as decoded:
        out = np.asarray(decoded.convert("RGBA"), dtype=np.float32)
    ref = src.astype(np.float32)
    seen = ref[..., 3] > 0
    pre_ref = ref[..., :3] * ref[..., 3:] / 255
    pre_out = out[..., :3] * out[..., 3:] / 255
    mse = float(np.mean((pre_ref[seen] - pre_out[seen]) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    _, ssim_map = structural_similarity(pre_ref, pre_out, channel_axis=2, data_range=255, full=True)
    ssim = float(ssim_map.mean(axis=2)[seen].mean())
    alpha_err = np.abs(ref[..., 3] - out[..., 3])
    return psnr, ssim, float(alpha_err.mean()), int(alpha_err.max())


WEBP_VARIANTS: tuple[tuple[int, int, int], ...] = tuple(
    (method, quality, alpha_quality)
    for method in range(7)
    for quality in (75, 80, 90)
    for alpha_quality in (100, 90)
)


def webp(rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {"rounds": rounds, "photos": {}}
    for im, mask in photos():
        with Image.open(io.BytesIO(im.data)) as rgb:
            img = _cutout(rgb.convert("RGB"), mask)
        src = np.asarray(img)
        opaque = img.convert("RGB")
        variants: dict[str, Callable[[], bytes]] = {}
        for method, quality, aq in WEBP_VARIANTS:
            variants[f"m{method} q{quality} aq{aq}"] = partial(_webp, img, method, quality, aq)
        # The same colour without an alpha plane: what the alpha plane itself costs.
        for method in (0, 2, 4):
            variants[f"m{method} q90 no alpha"] = partial(_webp, opaque, method, 90, 100)
        times: dict[str, list[float]] = {name: [] for name in variants}
        bodies: dict[str, bytes] = {}
        for _ in range(rounds):
            for name, fn in variants.items():
                bodies[name], ms = cpu_ms(fn)
                times[name].append(ms)
        rows = {}
        for name, body in bodies.items():
            quality = _fidelity(src, body) if "no alpha" not in name else (math.nan,) * 4
            rows[name] = {
                "min_ms": min(times[name]),
                "median_ms": statistics.median(times[name]),
                "kib": len(body) / 1024,
                "psnr": quality[0],
                "ssim": quality[1],
                "alpha_mae": quality[2],
                "alpha_max": quality[3],
            }
            print(im.name, name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
        results["photos"][f"{im.name} {im.width}x{im.height}"] = rows
    return results


def _webp(img: Image.Image, method: int, quality: int, alpha_quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=quality, alpha_quality=alpha_quality, method=method)
    return buf.getvalue()


def gil(rounds: int) -> dict[str, Any]:
    """Wall time of one PNG encode alone and of two at once in two threads: ~1x when the
    writer releases the GIL (two cores), ~2x when it holds it."""
    import fpng

    from bgsvc.imaging.encode import EncodeSettings, encode

    im, mask = photos()[0]
    with Image.open(io.BytesIO(im.data)) as rgb:
        img = _cutout(rgb.convert("RGB"), mask)
    writers: dict[str, Callable[[], object]] = {
        "fpng (service default)": lambda: encode(img, "png", None, EncodeSettings()),
        "fpng.from_pil": lambda: fpng.from_pil(img),
        "Pillow zlib level 1 rle": lambda: encode(
            img, "png", None, EncodeSettings(png_encoder="zlib")
        ),
        "Pillow WebP m0 q90": lambda: _webp(img, 0, 90, 100),
    }
    rows = []
    for name, fn in writers.items():
        one, two = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            fn()
            one.append(time.perf_counter() - started)
            threads = [threading.Thread(target=fn) for _ in range(2)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            two.append(time.perf_counter() - started)
        rows.append([name, min(one) * 1000, min(two) * 1000, min(two) / min(one)])
    headers = ["writer", "one alone ms", "two threads at once ms", "ratio"]
    return {"rounds": rounds, "table": {"headers": headers, "rows": rows}}


PARTS: dict[str, Callable[[int], dict[str, Any]]] = {
    "stages": stages,
    "webp": webp,
    "gil": gil,
    "edges": edges,
}


def webp_table(results: dict[str, Any]) -> str:
    """One row per variant: median over the photos of each measure."""
    photos_ = list(results["photos"].values())
    rows = []
    for name in photos_[0]:
        cells = [name]
        for key in ("median_ms", "kib", "psnr", "ssim", "alpha_mae", "alpha_max"):
            cells.append(statistics.median(p[name][key] for p in photos_))
        rows.append(cells)
    headers = ["variant", "ms", "KiB", "PSNR dB", "SSIM", "alpha MAE", "alpha max"]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("parts", nargs="*", help=f"any of: {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    for name in args.parts or list(PARTS):
        if name not in PARTS:
            parser.error(f"unknown part {name}; choose from {', '.join(PARTS)}")
        result = PARTS[name](args.rounds)
        path = OUT / "lean" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"## {name}\n")
        if name == "webp":
            print(webp_table(result))
        else:
            print(markdown_table(result["table"]["headers"], result["table"]["rows"]))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
