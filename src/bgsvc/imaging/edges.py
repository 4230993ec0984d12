"""The edge step: the model's small matte to the photo's size, and the subject's colour
where the matte is see-through.

The model sees a 1024 x 1024 copy of the photo, so a 12 MP result gets a matte four times
too coarse: enlarged bilinearly, a hair 2 px wide becomes a faint 8 px smear. The photo
itself still holds the detail, so the matte is enlarged with the colour guided filter (He,
Sun and Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013) in its fast form (He and
Sun, "Fast Guided Filter", arXiv 2015): the local linear model alpha ~ a.I + b is fitted at
the matte's own resolution, against the photo shrunk to the same grid, and its smooth
coefficients are enlarged and applied to the full-resolution photo. Fitting on the matte's
grid, where photo and matte are equally blurred, keeps the slope a unbiased; a grey guide
cannot separate a red strand from a green background of the same brightness (measured
worse than bilinear), the colour one can.

Even a perfect matte leaves the old background in the colour of every see-through pixel:
I = aF + (1 - a)B, and a green screen's B shows through blond hair. Decontamination
estimates F and B with Germer et al.'s multilevel solver ("Fast Multi-Level Foreground
Estimation", ICPR 2020; as pymatting's estimate_foreground_ml, compiled here with one
addition: B is drawn towards the clear background carried into the soft region, where
that background is even) on a reduced copy, enlarges them, and takes at full resolution
the step of Forte and Pitie's blur fusion
("Approximate Fast Foreground Colour Estimation", ICIP 2021),
F = F^ + a(I - aF^ - (1 - a)B^), so that the detail of F comes from the photo. Blur
fusion's own box-blur estimates, cheaper, left twice the error on strands: hair far from
any opaque pixel gets the blurred mixture of itself and the background.

At full resolution both are one compiled pass (bgsvc.imaging.edge_kernels) that enlarges
the small maps bilinearly as it goes, over the soft region only, and writes uint8: no
full-size float plane is ever made (one of a 25 MP photo alone is 100 MB). All OpenCV calls
and kernels run on the calling thread (bgsvc.imaging.opencv), or in bands on the helper
threads the caller lends for the call (bgsvc.imaging.bands).
"""

from __future__ import annotations

import numpy as np

from bgsvc.imaging import area, bands
from bgsvc.imaging import edge_kernels as kernels
from bgsvc.imaging.opencv import cv2
from bgsvc.imaging.resize import shrink

# Guided filter on the matte's grid: radius in matte pixels, regulariser for colours in
# [0, 1]. Measured on benchmarks/matting.py's set: with a perfect small matte r = 1 is best,
# with one a model pixel softer r = 4; r = 3 keeps most of both. A smaller eps gained
# little and would let photo noise into a.
GUIDED_RADIUS = 3
GUIDED_EPS = 1e-4
# The fit's grid is at most this on its long edge. The models served see at most 1024 px,
# so a larger matte (the wrapped graph's, already enlarged to the working copy) holds no
# more than a bilinear enlargement of that: fitting on it cost 4x for nothing (0.99 s of
# box filters on a 2048 x 2048 matte against 0.1-0.25 s on 1024 x 1024).
FIT_EDGE = 1024
# The foreground estimate's copy: a quarter of the photo's long edge, within these bounds
# (on strands, 1024 beat 512 by a quarter of the error, at four times the time).
ML_EDGE = (512, 1024)
# The multilevel solver's iterations (pymatting's defaults): 10 on levels up to 32 px, 2
# above. More on the fine levels cut the error on strands but raised it on the veil.
ML_ITERATIONS = (10, 2, 32)
# How strongly the estimated background is drawn to the clear background carried into
# the soft region (against I = aF + (1 - a)B's unit weight), and how fast that falls where
# the clear pixels it comes from vary: divided by 1 + var / BACKGROUND_SPREAD^2, var their
# variance summed over RGB in [0, 1]. On benchmarks/matting.py's set a plain 0.1 cut the
# veil's colour error by 69 % (27 % without), but over a busy photo (benchmarks/
# matting_real.py: chelsea on coffee) it raised the error on fur by 13-15 %: inside the
# subject, far from any clear pixel, the background is a guess, and a busy one a bad one.
# Weighted by the spread: the veil -66 %, chelsea on green 5.0 -> 1.6 levels, on coffee
# unchanged (9.85 -> 9.89).
BACKGROUND_PRIOR = 0.3
BACKGROUND_SPREAD = 0.03
# A model's matte is rarely exactly 0 or 255: its background holds faint values (1-3) and
# its subject 252-254 (83 % of a 2 MP photo's pixels were "soft" by 1..254). Outside this
# range the colour step changes a composite by at most 3 levels, so it is skipped there,
# and the guided filter's region is bounded by it.
SOFT = (4, 251)

_Shape = tuple[int, int]


def _resize(img: np.ndarray, size: _Shape) -> np.ndarray:
    """``img`` at ``size`` (w, h): area averaging when shrinking, bilinear when growing."""
    h, w = img.shape[:2]
    if (w, h) == size:
        return img
    if size[0] <= w and size[1] <= h:
        return shrink(img, size)
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def _resize_region(img: np.ndarray, size: _Shape, rows: slice, cols: slice) -> np.ndarray:
    """_resize(img, size)[rows, cols], contiguous; where the compiled average applies, only
    that region is computed."""
    if area.applies(img, size):
        return area.shrink(img, size, (rows, cols))
    return np.ascontiguousarray(_resize(img, size)[rows, cols])


def _box_mean(img: np.ndarray, radius: int, out: np.ndarray) -> None:
    """Into ``out`` (float32): the mean over each (2r+1)^2 window of ``img`` (float32)."""
    k = 2 * radius + 1
    cv2.boxFilter(img, cv2.CV_32F, (k, k), dst=out, borderType=cv2.BORDER_REFLECT)


def _grid(src: _Shape, cap: _Shape, edge: int) -> _Shape:
    """(w, h) of src's shape, shrunk to fit cap and a long edge of at most ``edge``."""
    w, h = src
    scale = min(1.0, cap[0] / w, cap[1] / h, edge / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def guided_coefficients(
    guide: np.ndarray, p: np.ndarray, radius: int, eps: float, near: np.ndarray | None = None
) -> np.ndarray:
    """The colour guided filter's averaged coefficients, float32 4xHxW [a_r, a_g, a_b, b],
    such that q = a . I + b with I and q in [0, 1]; ``guide`` uint8 HxWx3, ``p`` uint8 HxW;
    ``near`` (uint8 HxW): where a window holds a pixel where p varies (_varies); a is 0
    elsewhere. None: everywhere.
    The window sums of the photo, the matte and their products are integers, exact, kept
    as running sums by the fit's one pass (edge_kernels.fit)."""
    h, w = p.shape
    coef = np.empty((4, h, w), np.float32)
    if near is None:
        near = np.ones((h, w), np.uint8)
    solved = near  # narrowed, for the closure
    bands.over(h, lambda y0, y1: kernels.fit(guide, p, radius, eps, solved, coef, y0, y1))
    out = np.empty_like(coef)

    def mean(first: int, last: int) -> None:
        for i in range(first, last):
            _box_mean(coef[i], radius, out[i])

    # By plane, not by band: OpenCV's running float sums would round a band's own way.
    bands.over(len(coef), mean, least=1)
    return out


def _varies(p: np.ndarray) -> np.ndarray:
    """Where the matte ``p`` (uint8) is soft (SOFT), or steps by more than a model's faint
    values (SOFT[0] - 1) to a neighbour: a hard 0 to 255 edge with nothing soft between
    (uint8 mask, 0 or 255). Elsewhere the matte is flat for the guided filter."""
    step = cv2.morphologyEx(p, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    return cv2.bitwise_or(cv2.inRange(p, *SOFT), cv2.inRange(step, SOFT[0], 255))


def _soft_box(varies: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    """The bounding box of ``varies``'s non-zero pixels (where p varies, _varies), grown by
    pad, or None."""
    # numpy's any, not cv2.reduce: 0.1 against 3 ms on a 1024 x 681 grid.
    rows = np.flatnonzero(varies.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(varies.any(axis=0))
    h, w = varies.shape
    return (
        slice(max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)),
        slice(max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)),
    )


def preload() -> None:
    """Compile (or load from numba's cache) every kernel, as the service calls them, ahead
    of the first request: a first compile takes seconds."""
    rng = np.random.default_rng(0)
    matte = rng.integers(0, 256, (8, 8), np.uint8)
    area.preload()
    writable = rng.integers(0, 256, (12, 12, 4), np.uint8)
    # A decode's pixels are read-only (numpy's view of Pillow's buffer), and numba compiles
    # read-only arrays apart: both kinds, as an RGB array and as the RGB of an RGBA one.
    frozen = writable.copy()
    frozen.flags.writeable = False
    photos = [np.ascontiguousarray(writable[..., :3]), writable[..., :3], frozen[..., :3]]
    photos.append(photos[0].copy())
    photos[-1].flags.writeable = False
    for photo in photos:
        alpha = upscale_matte(matte, photo)
        decontaminate(photo, alpha)
        # Written into a cutout's RGBA array, as the plain cutout does.
        decontaminate(photo, alpha, out=np.empty_like(writable)[..., :3])


def upscale_matte(
    matte: np.ndarray, guide: np.ndarray, *, refine: bool = True, work_edge: int = 2048
) -> np.ndarray:
    """``matte`` (uint8 HxW, any size and aspect, e.g. the model's square output) at the size
    of ``guide`` (the full-resolution photo, uint8 HxWx3 RGB). ``refine=False``: a plain
    bilinear resize. ``refine=True``: the colour guided filter's fast form, fitted on the
    matte's grid (long edge at most ``work_edge``) and applied to the full-size photo."""
    h, w = guide.shape[:2]
    if not refine:
        return cv2.resize(matte, (w, h), interpolation=cv2.INTER_LINEAR)
    return guided_upscale(matte, guide, GUIDED_RADIUS, GUIDED_EPS, min(work_edge, FIT_EDGE))


def guided_upscale(
    matte: np.ndarray, guide: np.ndarray, radius: int, eps: float, work_edge: int
) -> np.ndarray:
    h, w = guide.shape[:2]
    grid = _grid((matte.shape[1], matte.shape[0]), (w, h), work_edge)
    p8 = _resize(matte, grid)
    # Only where the matte varies does the filter change anything: a window of constant p
    # has a = 0 and b = p. The margin covers the two box passes and their border reflection.
    varies = _varies(p8)
    box = _soft_box(varies, 3 * radius + 2)
    if box is None:
        return cv2.resize(p8, (w, h), interpolation=cv2.INTER_LINEAR)
    rows, cols = box
    # Within the box, too, most of a product photo's matte is flat: its soft pixels are a
    # band along the outline. The solve runs only on windows where the matte varies, and
    # the full-size pass only where the averaged coefficients can then have a slope.
    window = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    near = cv2.dilate(np.ascontiguousarray(varies[rows, cols]), window)
    active = cv2.dilate(near, window)
    small = _resize_region(guide, grid, rows, cols)
    coef = guided_coefficients(small, np.ascontiguousarray(p8[rows, cols]), radius, eps, near)
    coef[3] *= 255
    # Outside the box's footprint the matte is flat: its plain enlargement is the answer.
    flat = p8.copy()
    flat[rows, cols] = np.clip(coef[3], 0, 255).round().astype(np.uint8)
    out = cv2.resize(flat, (w, h), interpolation=cv2.INTER_LINEAR)
    span = (*_footprint(rows, grid[1], h), *_footprint(cols, grid[0], w))
    # The photo as it is, often the RGB view of an RGBA decode: a contiguous copy would be
    # 75 MB at 25 MP. preload() compiles the kernels for both layouts.
    origin = (cols.start, rows.start)

    def apply(lo: int, hi: int) -> None:
        band = (span[0] + lo, span[0] + hi, span[2], span[3])
        kernels.apply_guided(coef, grid, origin, guide, out, band, active)

    bands.over(span[1] - span[0], apply)
    return out


def _footprint(band: slice, small: int, full: int) -> tuple[int, int]:
    """The full-size indices [i0, i1) whose bilinear sample lies within ``band`` of a
    ``small``-long grid enlarged to ``full`` (at the grid's ends, samples clamp to it)."""
    scale = full / small
    i0 = 0 if band.start == 0 else int(np.ceil((band.start + 0.5) * scale - 0.5))
    i1 = full if band.stop >= small else int(np.floor((band.stop - 0.5) * scale - 0.5)) + 1
    return max(0, i0), max(max(0, i0), min(full, i1))


def decontaminate(
    pixels: np.ndarray,
    alpha: np.ndarray,
    *,
    work_edge: int = 2048,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The subject's own colour for ``pixels`` (uint8 HxWx3) under ``alpha`` (uint8 HxW):
    equal to ``pixels`` where alpha is 255 (and where it is 0, which the caller clears);
    estimated where it is in between. With nothing soft, ``pixels`` itself (no 75 MB copy
    of a 25 MP photo for nothing). ``out`` (uint8 HxWx3, any strides, e.g. the RGB of the
    cutout's RGBA array): where to write the soft pixels' colour, the others left as they
    are; returned."""
    if not cv2.inRange(alpha, *SOFT).any():
        return pixels if out is None else out
    if out is None:
        out = pixels.copy()
    lo, hi = ML_EDGE
    edge = min(work_edge, hi, max(lo, max(alpha.shape) // 4))
    f_hat, b_hat = foreground_ml(pixels, alpha, edge)
    return correct(out, pixels, alpha, f_hat, b_hat)


def foreground_ml(
    pixels: np.ndarray, alpha: np.ndarray, edge: int
) -> tuple[np.ndarray, np.ndarray]:
    """Germer et al.'s multilevel estimate of F and B (float32 HxWx3 in [0, 1]) on a copy
    of ``pixels`` and ``alpha`` (uint8) whose long edge is at most ``edge``, with B drawn
    towards the clear background carried into the soft region (clear_background)."""
    h, w = alpha.shape
    grid = _grid((w, h), (w, h), edge)
    small8 = _resize(alpha, grid)
    small = _resize(pixels, grid).astype(np.float32) / 255
    if max(grid) < 2:
        return small, small  # the solver's pyramid needs two pixels; F = B = I keeps I
    clear = small8 < SOFT[0]
    if clear.any():
        prior, weight = background_prior(small, clear)
    else:
        # No background in view to carry: smoothness alone.
        prior, weight = small, np.zeros((1, 1, 1), np.float32)
    small_a = (small8.astype(np.float32) / 255)[..., None]
    return kernels.foreground_ml(small, small_a, prior, weight, ML_ITERATIONS)


def background_prior(pixels: np.ndarray, clear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the background behind each pixel of ``pixels`` (float32 HxWx3 in [0, 1]) is
    likely to be, from the pixels where ``clear`` (bool HxW) is true, and how much to trust
    that (float32, HxWx1): BACKGROUND_PRIOR where the clear pixels it comes from agree,
    less where they vary (BACKGROUND_SPREAD). Both at half the size (clear_background)."""
    mean = clear_background(pixels, clear)
    var = np.maximum(clear_background(pixels * pixels, clear) - mean * mean, 0)
    weight = BACKGROUND_PRIOR / (1 + var.sum(axis=2, keepdims=True) / BACKGROUND_SPREAD**2)
    return mean, weight.astype(np.float32)


def clear_background(pixels: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """The colour of the pixels where ``clear`` (bool HxW) is true, carried into the rest
    by a push-pull pyramid (Gortler et al., "The Lumigraph", 1996): each pixel keeps its
    own colour in proportion to its clear share and takes the rest from the next coarser
    level, so a hole is filled by the nearest clear background at the scale of its width.
    ``pixels`` float32 HxWx3; float32 out at half the size (the solver samples it level by
    level: on the set, a full-size one measured the same for four times the cost)."""
    levels = []
    colour = pixels * clear[..., None]
    weight = clear.astype(np.float32)
    while max(weight.shape) > 1:
        size = ((weight.shape[1] + 1) // 2, (weight.shape[0] + 1) // 2)
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_AREA).reshape(*size[::-1], 3)
        weight = cv2.resize(weight, size, interpolation=cv2.INTER_AREA).reshape(size[::-1])
        levels.append((colour, weight))
    # The coarsest level is one pixel: the mean clear colour.
    est: np.ndarray = colour / max(float(weight[0, 0]), 1e-12)
    for colour, weight in reversed(levels[:-1]):
        h, w = weight.shape
        up = cv2.resize(est, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 3)
        est = colour + (1 - weight[..., None]) * up
    return est


def correct(
    out: np.ndarray, pixels: np.ndarray, alpha: np.ndarray, f_hat: np.ndarray, b_hat: np.ndarray
) -> np.ndarray:
    """Writes into ``out`` (and returns it), where alpha is soft, the full-resolution step
    F = F^ + a(I - aF^ - (1 - a)B^) from the small estimates F^ and B^ (float32, [0, 1])."""
    f = np.ascontiguousarray(f_hat * 255, np.float32)
    b = np.ascontiguousarray(b_hat * 255, np.float32)
    bands.over(
        alpha.shape[0], lambda y0, y1: kernels.correct(pixels, alpha, f, b, SOFT, out, y0, y1)
    )
    return out
