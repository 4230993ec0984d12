"""The edge step after the model, measured on a synthetic high-resolution matting set.

    python -m benchmarks.matting [--size WxH] [--out FILE] [--no-timings]

The model's matte is small (1024 x 1024) and the photo is not: the step that enlarges the
matte and the one that estimates the subject's colour where it is see-through decide how
hair and soft edges look. Real photos come without a true matte, so the set is drawn: a
subject with hundreds of curved 1-3 px strands, a hard anti-aliased outline, an
out-of-focus (blurred) edge and a translucent veil, composited in float as
I = aF + (1 - a)B over textured, strongly coloured backgrounds (saturated green, red/blue,
a busy multi-coloured texture, a smooth studio backdrop), with the true alpha and the true
foreground colour kept. The "model" matte is the true alpha shrunk to the model's square
input by area averaging, i.e. a perfect model: what is measured is only how much of the
lost resolution the upsampling and colour steps win back.

Metrics are those of alphamatting.com (Rhemann et al., "A Perceptually Motivated Online
Benchmark for Image Matting", CVPR 2009) in the unknown band (true alpha neither 0 nor 1,
dilated by a few pixels): SAD, MSE, gradient and connectivity error, the latter two as in
the Deep Image Matting evaluation code (Gaussian derivatives, sigma 1.4; thresholds in
steps of 0.1). Added: the foreground colour error, the mean absolute error (0-255 levels)
of the RGB where 0.05 < alpha < 0.95; without decontamination the foreground is the
composite itself. Times are the calling thread's CPU time, min over a few rounds, on the
set drawn at 12 MP (4000 x 3000) and at 2 MP; writes benchmarks/raw/2026-12-03-matting-prior.json
and prints Markdown tables. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from bgsvc.imaging.opencv import cv2

RAW = Path(__file__).resolve().parent / "raw" / "2026-12-03-matting-prior.json"
MODEL_EDGE = 1024
BACKGROUNDS = ("green", "redblue", "busy", "studio")


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # uint8 HxWx3, the composite
    alpha: np.ndarray  # float32 HxW in [0, 1], the true alpha
    foreground: np.ndarray  # uint8 HxWx3, the true foreground colour (meaningful where a > 0)
    matte: np.ndarray  # uint8, the true alpha at the model's resolution
    veil: np.ndarray  # bool HxW, where only the translucent veil covers the background


# -- the set --------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, size: tuple[int, int], cells: int, octaves: int) -> np.ndarray:
    """Smooth multi-octave value noise in about [-1, 1], float32 HxW (size is (w, h))."""
    w, h = size
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for octave in range(octaves):
        n = cells * 2**octave
        grid = rng.uniform(-1, 1, (max(2, n * h // max(w, h)) + 1, n + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.55
    return out / total


def _background(kind: str, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Float32 HxWx3 in [0, 255]."""
    w, h = size
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)
    if kind == "green":
        # A green screen gone wrong: saturated, uneven, textured.
        t = _noise(rng, size, 6, 6)
        base = np.array([40, 190, 60], np.float32)
        out = base + t[..., None] * np.array([25, 45, 25], np.float32) + 6 * grain[..., None]
    elif kind == "redblue":
        # Saturated red and blue patches with a fabric-like texture.
        mix = np.clip(_noise(rng, size, 4, 3) * 3 + 0.5, 0, 1)[..., None]
        red, blue = np.array([210, 30, 40], np.float32), np.array([30, 50, 200], np.float32)
        fabric = _noise(rng, size, 160, 2)[..., None]
        out = mix * red + (1 - mix) * blue + 35 * fabric + 5 * grain[..., None]
    elif kind == "busy":
        # High-contrast clutter: coloured discs and lines over a multi-colour texture, the
        # hardest case for a filter that trusts the photo's edges.
        out = np.stack([_noise(rng, size, 10, 5) for _ in range(3)], axis=-1) * 90 + 128
        scale = w / 4000
        for _ in range(120):
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            if rng.uniform() < 0.5:
                radius = max(2, int(rng.uniform(20, 160) * scale))
                cv2.circle(out, centre, radius, colour, -1, cv2.LINE_AA)
            else:
                end = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
                cv2.line(out, centre, end, colour, max(1, int(rng.uniform(1, 12) * scale)))
        out += 8 * grain[..., None]
    elif kind == "studio":
        # A smooth grey-blue backdrop with a light vignette: the easy case.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot((xx - w / 2) / w, (yy - h / 2) / h)
        out = np.array([150, 170, 200], np.float32) * (1.1 - 0.6 * r)[..., None]
        out += 12 * _noise(rng, size, 3, 3)[..., None] + 3 * grain[..., None]
    else:
        raise ValueError(kind)
    return np.clip(out, 0, 255).astype(np.float32)


HAIR_COLOURS = {
    "green": ((150, 60, 35), (200, 95, 50)),  # auburn on green
    "redblue": ((200, 170, 100), (240, 215, 150)),  # blonde on red/blue
    "busy": ((60, 40, 25), (110, 75, 45)),  # brown on clutter
    "studio": ((20, 18, 20), (70, 60, 55)),  # black on a studio grey
}


def _strands(
    rng: np.random.Generator,
    size: tuple[int, int],
    centre: tuple[float, float],
    radii: tuple[float, float],
    count: int,
) -> np.ndarray:
    """Hair: curved 1-3 px strands growing out of the head's upper outline; uint8 alpha."""
    w, h = size
    scale = w / 4000
    layer = np.zeros((h, w), np.uint8)
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for _ in range(count):
        angle = rng.uniform(-math.pi * 0.95, -math.pi * 0.05)  # the upper half
        x = centre[0] + radii[0] * 0.97 * math.cos(angle)
        y = centre[1] + radii[1] * 0.97 * math.sin(angle)
        heading = angle + rng.normal(0, 0.35)
        bend = rng.normal(0, 0.012)
        length = rng.uniform(150, 700) * scale
        step = max(1.0, 6 * scale)
        points = []
        for _ in range(int(length / step)):
            points.append((x, y))
            heading += bend + rng.normal(0, 0.02)
            x += step * math.cos(heading)
            y += step * math.sin(heading)
        thickness = int(rng.choice([1, 1, 2, 3]))
        opacity = int(rng.choice([130, 190, 255]))
        # Sub-pixel positions (shift = 4 fractional bits) so thin strands are truly soft.
        poly = np.round(np.array(points) * 16).astype(np.int32)
        groups.setdefault((thickness, opacity), []).append(poly)
    for (thickness, opacity), polys in sorted(groups.items()):
        cv2.polylines(layer, polys, False, opacity, thickness, cv2.LINE_AA, shift=4)
    return layer


def make_sample(
    kind: str,
    size: tuple[int, int] = (4000, 3000),
    *,
    seed: int = 0,
    model_edge: int = MODEL_EDGE,
    strands: int | None = None,
    veil: bool = True,
) -> Sample:
    """One drawn photo with its true alpha and foreground colour (deterministic in seed)."""
    w, h = size
    rng = np.random.default_rng([seed, BACKGROUNDS.index(kind)])
    scale = w / 4000
    if strands is None:
        strands = max(150, int(500 * scale))
    centre = (w * rng.uniform(0.42, 0.58), h * 0.48)
    radii = (w * 0.15, h * 0.24)

    # The subject: a head with a hard anti-aliased outline and out-of-focus shoulders.
    head = np.zeros((h, w), np.uint8)
    cv2.ellipse(
        head, ((centre[0], centre[1]), (2 * radii[0], 2 * radii[1]), 0), 255, -1, cv2.LINE_AA
    )
    body = np.zeros((h, w), np.uint8)
    cv2.ellipse(body, ((centre[0], h * 1.02), (w * 0.62, h * 0.62), 0), 255, -1, cv2.LINE_AA)
    sigma = max(1.0, 9 * scale)
    body = cv2.GaussianBlur(body, (0, 0), sigma)
    hair = _strands(rng, size, centre, radii, strands)
    solid = np.maximum(np.maximum(head, body), hair).astype(np.float32) / 255

    # A translucent veil beside the head, with a soft edge and uneven density.
    cloth = np.zeros((h, w), np.uint8)
    vc = (centre[0] + radii[0] * 1.5, h * 0.62)
    cv2.ellipse(cloth, (vc, (w * 0.22, h * 0.5), 20), 255, -1, cv2.LINE_AA)
    veil_a = cv2.GaussianBlur(cloth, (0, 0), max(1.0, 14 * scale)).astype(np.float32) / 255
    veil_a *= 0.45 + 0.2 * _noise(rng, size, 8, 3)
    if not veil:
        veil_a[:] = 0

    # Foreground colours: hair colour shading into skin/clothes, textured; the veil's own.
    dark, light = (np.array(c, np.float32) for c in HAIR_COLOURS[kind])
    t = np.clip(_noise(rng, size, 12, 4) * 1.5 + 0.5, 0, 1)[..., None]
    hair_rgb = dark + t * (light - dark)
    skin = np.array([225, 175, 150], np.float32) + 25 * _noise(rng, size, 20, 3)[..., None]
    shirt = np.array([70, 80, 160], np.float32) + 20 * _noise(rng, size, 30, 3)[..., None]
    # A strand's faint anti-aliased rim is still hair, a blurred shirt's fringe still shirt.
    hw = (hair > 0).astype(np.float32)[..., None]
    bw = np.clip(body.astype(np.float32) / 255 * 20, 0, 1)[..., None]
    subject = skin * (1 - bw) + shirt * bw
    subject = hair_rgb * hw + subject * (1 - hw)
    veil_rgb = np.array([235, 235, 245], np.float32) + 10 * _noise(rng, size, 6, 2)[..., None]

    # Subject over veil over background, all in float.
    a1, a2 = solid[..., None], veil_a[..., None]
    alpha = 1 - (1 - a1) * (1 - a2)
    fg = (a1 * subject + (1 - a1) * a2 * veil_rgb) / np.maximum(alpha, 1e-6)
    fg = np.where(alpha > 0, fg, subject)
    fg = np.clip(fg, 0, 255)
    fg_u8 = np.round(fg).astype(np.uint8)
    bg = _background(kind, rng, size)
    alpha2 = alpha[..., 0]
    image = alpha * fg_u8.astype(np.float32) + (1 - alpha) * bg
    image_u8 = np.round(np.clip(image, 0, 255)).astype(np.uint8)
    matte = cv2.resize(alpha2, (model_edge, model_edge), interpolation=cv2.INTER_AREA)
    matte_u8 = np.round(np.clip(matte, 0, 1) * 255).astype(np.uint8)
    only_veil = (veil_a > 0.02) & (solid < 0.02)
    return Sample(
        f"{kind} {w}x{h}", image_u8, alpha2.astype(np.float32), fg_u8, matte_u8, only_veil
    )


def make_set(
    size: tuple[int, int] = (4000, 3000),
    *,
    seed: int = 0,
    model_edge: int = MODEL_EDGE,
    kinds: tuple[str, ...] = BACKGROUNDS,
) -> list[Sample]:
    return [make_sample(k, size, seed=seed, model_edge=model_edge) for k in kinds]


# -- metrics --------------------------------------------------------------------------------


def unknown_band(alpha: np.ndarray, dilate: int = 3) -> np.ndarray:
    """Where the true alpha is neither 0 nor 1, grown by ``dilate`` px: the trimap's unknown."""
    soft = ((alpha > 0.5 / 255) & (alpha < 1 - 0.5 / 255)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
    return cv2.dilate(soft, kernel).astype(bool)


def _crop(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    h, w = mask.shape
    return (
        slice(max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)),
        slice(max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)),
    )


def _gradient_magnitude(a: np.ndarray) -> np.ndarray:
    # DIM's gradient error: normalise to [0, 1] (mat2gray), Gaussian derivatives, sigma 1.4.
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    gx = ndimage.gaussian_filter(a, 1.4, order=(0, 1))
    gy = ndimage.gaussian_filter(a, 1.4, order=(1, 0))
    return np.hypot(gx, gy)


def _connectivity_phi(a: np.ndarray, levels: np.ndarray) -> np.ndarray:
    d = a - levels
    return 1 - d * (d >= 0.15)


def _connectivity_levels(pred: np.ndarray, true: np.ndarray, step: float = 0.1) -> np.ndarray:
    # Per pixel, the highest threshold at which it is still 4-connected to the source region
    # (the largest component where both mattes are >= the threshold).
    levels = np.full(pred.shape, -1.0, np.float64)
    thresholds = np.arange(0, 1 + step / 2, step)
    for prev, t in itertools.pairwise(thresholds):
        both = ((pred >= t) & (true >= t)).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(both, connectivity=4)
        omega = np.zeros(pred.shape, bool)
        if n > 1:
            biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            omega = labels == biggest
        levels[(levels == -1) & ~omega] = prev
    levels[levels == -1] = 1
    return levels


def alpha_metrics(pred: np.ndarray, true: np.ndarray, band: np.ndarray) -> dict[str, float]:
    """SAD (/1000), MSE (x1000, per band pixel), gradient (/1000) and connectivity (/1000)
    errors of a predicted uint8 matte against the true float one, in the band."""
    rows, cols = _crop(band, 16)
    p = pred[rows, cols].astype(np.float64) / 255
    t = true[rows, cols].astype(np.float64)
    m = band[rows, cols]
    diff = p - t
    grad = (_gradient_magnitude(p) - _gradient_magnitude(t)) ** 2
    # Connectivity needs whole components: compute it on the full frame, cropped to the band
    # only where both mattes are flat (0 or 1) outside, which is what the crop pads cover.
    levels = _connectivity_levels(pred.astype(np.float64) / 255, true.astype(np.float64))
    lv = levels[rows, cols]
    conn = np.abs(_connectivity_phi(p, lv) - _connectivity_phi(t, lv))
    return {
        "sad": float(np.abs(diff)[m].sum() / 1000),
        "mse": float((diff**2)[m].mean() * 1000),
        "grad": float(grad[m].sum() / 1000),
        "conn": float(conn[m].sum() / 1000),
    }


def colour_error(estimate: np.ndarray, sample: Sample, part: str = "all") -> float:
    """Mean absolute error (0-255) of the foreground colour where 0.05 < true alpha < 0.95;
    part "veil": only under the lone veil, "edges": everywhere else (strands, outlines)."""
    where = (sample.alpha > 0.05) & (sample.alpha < 0.95)
    if part == "veil":
        where &= sample.veil
    elif part == "edges":
        where &= ~sample.veil
    diff = np.abs(estimate[where].astype(np.int16) - sample.foreground[where].astype(np.int16))
    return float(diff.mean())


# -- the methods ----------------------------------------------------------------------------


def soften(matte: np.ndarray) -> np.ndarray:
    """An imperfect model: the perfect small matte blurred by one model pixel (real mattes
    are softer than the area average of the truth), to check the choice is not tuned to a
    perfect matte."""
    return cv2.GaussianBlur(matte, (0, 0), 1.0)


def _full_res_guided(
    matte: np.ndarray, image: np.ndarray, *, grey: bool, radius: int, eps: float
) -> np.ndarray:
    # The classic guided filter over the bilinear enlargement, at full resolution (the prior
    # notes' r = 8, eps = 1e-3 on a 2400 x 1800 photo).
    h, w = image.shape[:2]
    p = cv2.resize(matte, (w, h), interpolation=cv2.INTER_LINEAR)
    guide = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if grey else image
    q = cv2.ximgproc.guidedFilter(guide, p, radius, eps * 255 * 255)
    return np.asarray(q, np.uint8)


def _grid_guided(
    matte: np.ndarray, image: np.ndarray, *, edge: int, radius: int, eps: float
) -> np.ndarray:
    # The fast guided filter on a grid of the photo's aspect (the matte enlarged onto it)
    # instead of the matte's own grid.
    from bgsvc.imaging import edges

    h, w = image.shape[:2]
    grid = edges._grid((w, h), (w, h), edge)
    return edges.guided_upscale(edges._resize(matte, grid), image, radius, eps, edge)


def alpha_methods(sweep: bool) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    from bgsvc.imaging import edges

    r, eps = edges.GUIDED_RADIUS, edges.GUIDED_EPS
    methods: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "bilinear": lambda m, im: edges.upscale_matte(m, im, refine=False),
        f"chosen: fast colour guided, matte grid, r={r} eps={eps:g}": edges.upscale_matte,
        "full-res grey guided r=8 eps=1e-3": lambda m, im: _full_res_guided(
            m, im, grey=True, radius=8, eps=1e-3
        ),
        "full-res colour guided r=8 eps=1e-3": lambda m, im: _full_res_guided(
            m, im, grey=False, radius=8, eps=1e-3
        ),
        f"fast colour guided, photo-aspect grid 2048, r={2 * r}": lambda m, im: _grid_guided(
            m, im, edge=2048, radius=2 * r, eps=eps
        ),
    }
    if sweep:
        for radius in (1, 2, 4, 8):
            for e in (1e-5, 1e-4, 1e-3):
                methods[f"fast colour guided, matte grid, r={radius} eps={e:g}"] = (
                    lambda m, im, radius=radius, e=e: edges.guided_upscale(m, im, radius, e, 2048)
                )
    return methods


def _blur_fusion(
    pixels: np.ndarray, alpha: np.ndarray, radii: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    # Forte and Pitie's blur fusion (ICIP 2021): F^ and B^ from alpha-weighted box blurs,
    # each pass corrected by one step towards I = aF + (1 - a)B.
    img = pixels.astype(np.float32) / 255
    a = (alpha.astype(np.float32) / 255)[..., None]
    f = b = f_hat = b_hat = img
    for radius in radii:
        k = (2 * radius + 1, 2 * radius + 1)
        blur_a = cv2.blur(a[..., 0], k)[..., None]
        f_hat = cv2.blur(f * a, k) / (blur_a + 1e-5)
        b_hat = cv2.blur(b * (1 - a), k) / ((1 - blur_a) + 1e-5)
        f = np.clip(f_hat + a * (img - a * f_hat - (1 - a) * b_hat), 0, 1)
        b = b_hat
    return f_hat, b_hat


def _fusion_at(pixels: np.ndarray, alpha: np.ndarray, edge: int) -> np.ndarray:
    from bgsvc.imaging import edges

    h, w = alpha.shape
    grid = edges._grid((w, h), (w, h), edge)
    scale = max(grid) / 2000  # the paper's radii (90, then 6) are for ~2 MP photos
    radii = (max(1, round(90 * scale)), max(1, round(6 * scale)))
    f_hat, b_hat = _blur_fusion(edges._resize(pixels, grid), edges._resize(alpha, grid), radii)
    return edges.correct(pixels.copy(), pixels, alpha, f_hat, b_hat)


def _ml_at(pixels: np.ndarray, alpha: np.ndarray, edge: int) -> np.ndarray:
    from bgsvc.imaging import edges

    f_hat, b_hat = edges.foreground_ml(pixels, alpha, edge)
    return edges.correct(pixels.copy(), pixels, alpha, f_hat, b_hat)


def _ml_edge(alpha: np.ndarray) -> int:
    from bgsvc.imaging import edges

    lo, hi = edges.ML_EDGE
    return min(hi, max(lo, max(alpha.shape) // 4))


def _ml_without_prior(pixels: np.ndarray, alpha: np.ndarray, *, pymatting: bool) -> np.ndarray:
    # The estimate before the background prior: pymatting's own solver, or bgsvc's with
    # the prior's weight at 0 (the same algorithm, to show the prior alone).
    from bgsvc.imaging import edge_kernels, edges

    h, w = alpha.shape
    grid = edges._grid((w, h), (w, h), _ml_edge(alpha))
    small = edges._resize(pixels, grid).astype(np.float32) / 255
    small_a = edges._resize(alpha, grid).astype(np.float32) / 255
    if pymatting:
        from pymatting import estimate_foreground_ml

        f, b = estimate_foreground_ml(small, small_a, return_background=True)
    else:
        iterations = edges.ML_ITERATIONS
        none = np.zeros((1, 1, 1), np.float32)
        f, b = edge_kernels.foreground_ml(small, small_a[..., None], small, none, iterations)
    f_hat, b_hat = np.asarray(f, np.float32), np.asarray(b, np.float32)
    return edges.correct(pixels.copy(), pixels, alpha, f_hat, b_hat)


def _ml_prior(pixels: np.ndarray, alpha: np.ndarray, weight: float, spread: float) -> np.ndarray:
    from bgsvc.imaging import edges

    saved = edges.BACKGROUND_PRIOR, edges.BACKGROUND_SPREAD
    edges.BACKGROUND_PRIOR, edges.BACKGROUND_SPREAD = weight, spread
    try:
        return edges.decontaminate(pixels, alpha)
    finally:
        edges.BACKGROUND_PRIOR, edges.BACKGROUND_SPREAD = saved


def colour_methods(sweep: bool) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    from bgsvc.imaging import edges

    prior, spread = edges.BACKGROUND_PRIOR, edges.BACKGROUND_SPREAD
    methods: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "none": lambda im, a: im,
        f"chosen: multilevel with the clear background as B's prior ({prior:g}, "
        f"spread {spread:g}), at long/4 in [512, 1024] + full-res step": edges.decontaminate,
        "before: pymatting's multilevel at long/4 in [512, 1024] + full-res step": (
            lambda im, a: _ml_without_prior(im, a, pymatting=True)
        ),
        "multilevel without the prior (bgsvc's solver, weight 0)": (
            lambda im, a: _ml_without_prior(im, a, pymatting=False)
        ),
        "blur fusion at 1024 + full-res step": lambda im, a: _fusion_at(im, a, 1024),
        "blur fusion at full res + step": lambda im, a: _fusion_at(im, a, 1 << 30),
        "multilevel with prior at 1024 + full-res step": lambda im, a: _ml_at(im, a, 1024),
    }
    methods["multilevel with prior at 512 + full-res step"] = lambda im, a: _ml_at(im, a, 512)
    for weight, sp in ((0.1, 1e9), (0.01, 1e9), (1.0, 1e9), (0.1, 0.05)):
        label = f"multilevel, prior weight {weight:g}, " + (
            "not weighted by the spread" if sp > 1 else f"spread {sp:g}"
        )
        methods[label] = lambda im, a, w=weight, sp=sp: _ml_prior(im, a, w, sp)
    if sweep:
        methods["multilevel at 256 + full-res step"] = lambda im, a: _ml_at(im, a, 256)
        methods["multilevel at 768 + full-res step"] = lambda im, a: _ml_at(im, a, 768)
        methods["multilevel at full res + step"] = lambda im, a: _ml_at(im, a, 1 << 30)
    return methods


# -- the run --------------------------------------------------------------------------------


def _mean_change(rows: list[dict[str, float]], base: list[dict[str, float]], key: str) -> float:
    """Mean over the images of the relative change against the baseline, in %."""
    return 100 * float(np.mean([r[key] / b[key] - 1 for r, b in zip(rows, base, strict=True)]))


def quality(samples: list[Sample], sweep: bool) -> dict[str, Any]:
    from bgsvc.imaging import edges

    alpha_rows: dict[str, dict[str, Any]] = {}
    colour_rows: dict[str, dict[str, Any]] = {}
    keys = ("sad", "mse", "grad", "conn")
    for variant in ("perfect", "softened"):
        per: dict[str, list[dict[str, float]]] = {}
        for s in samples:
            band = unknown_band(s.alpha)
            matte = s.matte if variant == "perfect" else soften(s.matte)
            for name, fn in alpha_methods(sweep and variant == "perfect").items():
                if variant == "softened" and name.startswith("full-res"):
                    continue
                per.setdefault(name, []).append(alpha_metrics(fn(matte, s.image), s.alpha, band))
        base = per["bilinear"]
        for name, rows in per.items():
            alpha_rows[f"{variant} matte: {name}"] = {
                "per_image": {s.name: r for s, r in zip(samples, rows, strict=True)},
                **{k: float(np.mean([r[k] for r in rows])) for k in keys},
                **{f"{k}_change_pct": _mean_change(rows, base, k) for k in keys},
            }
    per_c: dict[str, list[dict[str, float]]] = {}
    for s in samples:
        alpha = edges.upscale_matte(s.matte, s.image)
        for name, fn in colour_methods(sweep).items():
            est = fn(s.image, alpha)
            per_c.setdefault(name, []).append(
                {part: colour_error(est, s, part) for part in ("all", "edges", "veil")}
            )
    base_c = per_c["none"]
    for name, rows in per_c.items():
        colour_rows[name] = {
            "per_image": {s.name: r for s, r in zip(samples, rows, strict=True)},
            **{p: float(np.mean([r[p] for r in rows])) for p in ("all", "edges", "veil")},
            **{f"{p}_change_pct": _mean_change(rows, base_c, p) for p in ("all", "edges", "veil")},
        }
    return {"alpha": alpha_rows, "colour": colour_rows}


def _cpu_ms(fn: Callable[[], object], rounds: int) -> float:
    best = math.inf
    for _ in range(rounds):
        started = time.thread_time()
        fn()
        best = min(best, time.thread_time() - started)
    return best * 1000


def timings(rounds: int) -> dict[str, Any]:
    """CPU ms (min over rounds) of each function, at 12 MP and 2 MP, on the busy-background
    sample (hair over a third of the frame: a heavy case) and on a plain outline (the same
    subject with 30 strands and no veil: closer to a typical portrait)."""
    from bgsvc.imaging import edges

    out: dict[str, Any] = {}
    for label, size in (("12 MP", (4000, 3000)), ("2 MP", (1632, 1224))):
        for case, kw in (("hair", {}), ("outline", {"strands": 30, "veil": False})):
            s = make_sample("busy", size, **kw)  # type: ignore[arg-type]
            alpha = edges.upscale_matte(s.matte, s.image)
            soft = float(((alpha > 0) & (alpha < 255)).mean())
            row = {
                "soft_fraction": soft,
                "bilinear_ms": _cpu_ms(
                    lambda s=s: edges.upscale_matte(s.matte, s.image, refine=False), rounds
                ),
                "upscale_matte_ms": _cpu_ms(
                    lambda s=s: edges.upscale_matte(s.matte, s.image), rounds
                ),
                "decontaminate_ms": _cpu_ms(
                    lambda s=s, a=alpha: edges.decontaminate(s.image, a), rounds
                ),
            }
            row["together_ms"] = row["upscale_matte_ms"] + row["decontaminate_ms"]
            out[f"{label} {case}"] = row
    return out


def _parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _print_tables(results: dict[str, Any]) -> None:
    from benchmarks.report import markdown_table

    q = results["quality"]
    rows = [
        [
            name,
            r["sad"],
            r["mse"],
            r["grad"],
            r["conn"],
            f"{r['sad_change_pct']:+.0f}%",
            f"{r['mse_change_pct']:+.0f}%",
            f"{r['grad_change_pct']:+.0f}%",
            f"{r['conn_change_pct']:+.0f}%",
        ]
        for name, r in q["alpha"].items()
    ]
    print(
        markdown_table(
            [
                "alpha method",
                "SAD/1000",
                "MSE x1000",
                "grad",
                "conn/1000",
                "SAD",
                "MSE",
                "grad",
                "conn",
            ],
            rows,
        )
    )
    print()
    rows = [
        [
            name,
            r["all"],
            r["edges"],
            r["veil"],
            f"{r['all_change_pct']:+.0f}%",
            f"{r['edges_change_pct']:+.0f}%",
            f"{r['veil_change_pct']:+.0f}%",
        ]
        for name, r in q["colour"].items()
    ]
    print(
        markdown_table(
            ["colour method", "err all", "err edges", "err veil", "all", "edges", "veil"], rows
        )
    )
    if "timings" in results:
        print()
        rows = [
            [
                k,
                r["soft_fraction"],
                r["bilinear_ms"],
                r["upscale_matte_ms"],
                r["decontaminate_ms"],
                r["together_ms"],
            ]
            for k, r in results["timings"].items()
        ]
        print(
            markdown_table(
                [
                    "size",
                    "soft px",
                    "bilinear ms",
                    "upscale_matte ms",
                    "decontaminate ms",
                    "together ms",
                ],
                rows,
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=_parse_size, default=(4000, 3000), help="WxH of the set")
    parser.add_argument("--out", type=Path, default=RAW)
    parser.add_argument("--sweep", action="store_true", help="also the parameter sweeps")
    parser.add_argument("--no-timings", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from benchmarks.report import write_json
    from bgsvc.imaging import edges

    # Timings first, in a process not yet fragmented by the 12 MP set.
    timed = None if args.no_timings else timings(args.rounds)
    samples = make_set(args.size)
    results: dict[str, Any] = {
        "environment": {
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "cpu": platform.machine(),
            "threads": "1 (OpenCV, numba)",
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "set": {
            "size": list(args.size),
            "model_edge": MODEL_EDGE,
            "images": [s.name for s in samples],
            "band_fraction": {s.name: float(unknown_band(s.alpha).mean()) for s in samples},
        },
        "chosen": {
            "upscale_matte": {
                "method": "fast colour guided filter on the matte's grid",
                "radius": edges.GUIDED_RADIUS,
                "eps": edges.GUIDED_EPS,
            },
            "decontaminate": {
                "method": "multilevel foreground estimate (Germer et al.) on a "
                "reduced copy, B drawn towards the clear background (push-pull), "
                "+ full-resolution step",
                "work_edge": "long edge / 4, within " + str(edges.ML_EDGE),
                "background_prior": edges.BACKGROUND_PRIOR,
                "background_spread": edges.BACKGROUND_SPREAD,
                "iterations": list(edges.ML_ITERATIONS),
            },
        },
        "quality": quality(samples, args.sweep),
    }
    del samples
    if timed is not None:
        results["timings"] = timed
    write_json(args.out, results)
    _print_tables(results)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
