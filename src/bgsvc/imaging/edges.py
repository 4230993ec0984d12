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
Estimation", ICPR 2020; pymatting's estimate_foreground_ml) on a reduced copy, enlarges
them, and takes at full resolution the step of Forte and Pitie's blur fusion
("Approximate Fast Foreground Colour Estimation", ICIP 2021),
F = F^ + a(I - aF^ - (1 - a)B^), so that the detail of F comes from the photo. Blur
fusion's own box-blur estimates, cheaper, left twice the error on strands: hair far from
any opaque pixel gets the blurred mixture of itself and the background.

Both functions touch at full resolution only the blocks where alpha is soft, in bands of
rows, so their extra memory stays a few bands of float32 whatever the photo's size (a
float32 plane of a 25 MP photo alone is 100 MB), and their time follows the length of the
subject's outline rather than the photo's area. All OpenCV calls run on the calling thread
(bgsvc.imaging.opencv).
"""

from __future__ import annotations

import numpy as np

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
# Full-resolution work is done in blocks of this many pixels, skipped where alpha is flat.
BLOCK = 64
# Where q = a.I + b moves less than half a level from b (|a_r| + |a_g| + |a_b| below this,
# with I in [0, 1]), the plain enlargement of b is the answer: only the rest is computed.
_FLAT = 0.5 / 255
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


def _box(img: np.ndarray, radius: int) -> np.ndarray:
    k = 2 * radius + 1
    return cv2.boxFilter(img, -1, (k, k), borderType=cv2.BORDER_REFLECT)


def _grid(src: _Shape, cap: _Shape, edge: int) -> _Shape:
    """(w, h) of src's shape, shrunk to fit cap and a long edge of at most ``edge``."""
    w, h = src
    scale = min(1.0, cap[0] / w, cap[1] / h, edge / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def guided_coefficients(
    guide: np.ndarray, p: np.ndarray, radius: int, eps: float
) -> list[np.ndarray]:
    """The colour guided filter's averaged coefficients [a_r, a_g, a_b, b], each HxW
    float32, such that q = a . I + b; ``guide`` HxWx3 and ``p`` HxW, float32 in [0, 1]."""
    # Planes, not interleaved channels: numpy is several times slower on strided views.
    r, g, b = cv2.split(guide)
    mr, mg, mb, mp = (_box(x, radius) for x in (r, g, b, p))
    cr = _box(r * p, radius) - mr * mp
    cg = _box(g * p, radius) - mg * mp
    cb = _box(b * p, radius) - mb * mp
    rr = _box(r * r, radius) - mr * mr + eps
    rg = _box(r * g, radius) - mr * mg
    rb = _box(r * b, radius) - mr * mb
    gg = _box(g * g, radius) - mg * mg + eps
    gb = _box(g * b, radius) - mg * mb
    bb = _box(b * b, radius) - mb * mb + eps
    # The 3x3 covariance's inverse by cofactors (symmetric, positive definite with eps).
    i_rr = gg * bb - gb * gb
    i_rg = gb * rb - rg * bb
    i_rb = rg * gb - gg * rb
    i_gg = rr * bb - rb * rb
    i_gb = rb * rg - rr * gb
    i_bb = rr * gg - rg * rg
    inv_det = 1 / (rr * i_rr + rg * i_rg + rb * i_rb)
    a_r = (i_rr * cr + i_rg * cg + i_rb * cb) * inv_det
    a_g = (i_rg * cr + i_gg * cg + i_gb * cb) * inv_det
    a_b = (i_rb * cr + i_gb * cg + i_bb * cb) * inv_det
    b0 = mp - a_r * mr - a_g * mg - a_b * mb
    return [_box(x, radius) for x in (a_r, a_g, a_b, b0)]


class _Upsampler:
    """Bilinear enlargement of a small map to (w, h), one block at a time: the same samples
    as one cv2.resize of the whole map, without ever holding it at full size. ``origin``:
    where ``src`` (a crop) starts in the small map."""

    def __init__(self, src: np.ndarray, small: _Shape, size: _Shape, origin: _Shape = (0, 0)):
        self.src = src
        self.sx = small[0] / size[0]
        self.sy = small[1] / size[1]
        self.ox, self.oy = origin

    def block(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        m = np.array(
            [
                [self.sx, 0.0, (x0 + 0.5) * self.sx - 0.5 - self.ox],
                [0.0, self.sy, (y0 + 0.5) * self.sy - 0.5 - self.oy],
            ]
        )
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(
            self.src, m, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_REPLICATE
        )

    def columns(self, y0: int, y1: int, active: np.ndarray, width: int) -> np.ndarray:
        """For full-size rows [y0, y1) and BLOCK-wide column blocks, whether the block reads
        an ``active`` source pixel (``active``: bool, the shape of ``src``)."""
        h, w = active.shape
        r0 = int(np.floor((y0 + 0.5) * self.sy - 0.5)) - self.oy
        r1 = int(np.floor((y1 - 0.5) * self.sy - 0.5)) + 2 - self.oy
        starts = np.arange(0, width, BLOCK)
        if r1 <= 0 or r0 >= h:
            return np.zeros(starts.size, bool)
        cols = active[max(0, r0) : r1].any(axis=0)
        src = np.floor((starts + 0.5) * self.sx - 0.5).astype(np.int64) - self.ox
        ends = np.floor((starts + BLOCK - 0.5) * self.sx - 0.5).astype(np.int64) + 2 - self.ox
        hits = np.concatenate(([0], np.cumsum(cols)))
        return np.asarray(hits[np.clip(ends, 0, w)] > hits[np.clip(src, 0, w)])


def _runs(flags: np.ndarray, width: int) -> list[tuple[int, int]]:
    """Column ranges (x0, x1) of the runs of True blocks."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(s) * BLOCK, min(width, int(e) * BLOCK)) for s, e in zip(starts, ends, strict=True)]


def _soft_box(p: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    """The bounding box of p's soft pixels (neither 0 nor 1), grown by pad, or None."""
    soft = cv2.inRange(p, *SOFT)
    rows = np.flatnonzero(cv2.reduce(soft, 1, cv2.REDUCE_MAX))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(cv2.reduce(soft, 0, cv2.REDUCE_MAX))
    h, w = p.shape
    return (
        slice(max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)),
        slice(max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)),
    )


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
    # Only where the matte is soft does the filter change anything: a window of constant p
    # has a = 0 and b = p. The margin covers the two box passes and their border reflection.
    box = _soft_box(p8, 3 * radius + 2)
    if box is None:
        return cv2.resize(p8, (w, h), interpolation=cv2.INTER_LINEAR)
    rows, cols = box
    p = p8[rows, cols].astype(np.float32) / 255
    small = _resize(guide, grid)[rows, cols].astype(np.float32) / 255
    a_r, a_g, a_b, b = guided_coefficients(small, p, radius, eps)
    # Where a is flat, q is b, which the plain enlargement below already gives.
    active = (np.abs(a_r) + np.abs(a_g) + np.abs(a_b)) > _FLAT
    b255 = b * 255
    # Where nothing is active q is b, 0 or 255: the plain enlargement of the flat map.
    flat = p8.copy()
    flat[rows, cols] = np.clip(b255, 0, 255).round().astype(np.uint8)
    out = cv2.resize(flat, (w, h), interpolation=cv2.INTER_LINEAR)
    origin = (cols.start, rows.start)
    up_a = _Upsampler(cv2.merge([a_r, a_g, a_b]), grid, (w, h), origin)
    up_b = _Upsampler(b255, grid, (w, h), origin)
    ones = np.ones((1, 3), np.float32)
    for y0 in range(0, h, BLOCK):
        y1 = min(h, y0 + BLOCK)
        for x0, x1 in _runs(up_a.columns(y0, y1, active, w), w):
            # numpy for the element-wise steps: OpenCV reads a 1-pixel array as a scalar.
            prod = up_a.block(y0, y1, x0, x1) * guide[y0:y1, x0:x1]
            q = cv2.transform(prod, ones).reshape(y1 - y0, x1 - x0)
            q += up_b.block(y0, y1, x0, x1).reshape(y1 - y0, x1 - x0)
            out[y0:y1, x0:x1] = cv2.convertScaleAbs(np.maximum(q, 0, out=q))
    return out


def decontaminate(pixels: np.ndarray, alpha: np.ndarray, *, work_edge: int = 2048) -> np.ndarray:
    """The subject's own colour for ``pixels`` (uint8 HxWx3) under ``alpha`` (uint8 HxW):
    equal to ``pixels`` where alpha is 255 (and where it is 0, which the caller clears);
    estimated where it is in between. With nothing soft, ``pixels`` itself (no 75 MB copy
    of a 25 MP photo for nothing)."""
    if not cv2.inRange(alpha, *SOFT).any():
        return pixels
    out = pixels.copy()
    lo, hi = ML_EDGE
    edge = min(work_edge, hi, max(lo, max(alpha.shape) // 4))
    f_hat, b_hat = foreground_ml(pixels, alpha, edge)
    return correct(out, pixels, alpha, f_hat, b_hat)


def foreground_ml(
    pixels: np.ndarray, alpha: np.ndarray, edge: int
) -> tuple[np.ndarray, np.ndarray]:
    """Germer et al.'s multilevel estimate of F and B (float32 HxWx3 in [0, 1]) on a copy
    of ``pixels`` and ``alpha`` (uint8) whose long edge is at most ``edge``."""
    from pymatting import estimate_foreground_ml  # numba kernels compiled by refine.preload

    h, w = alpha.shape
    grid = _grid((w, h), (w, h), edge)
    small = _resize(pixels, grid).astype(np.float32) / 255
    small_a = _resize(alpha, grid).astype(np.float32) / 255
    if max(grid) < 2:
        return small, small  # the solver's pyramid needs two pixels; F = B = I keeps I
    f, b = estimate_foreground_ml(small, small_a, return_background=True)
    return np.asarray(f, np.float32), np.asarray(b, np.float32)


def correct(
    out: np.ndarray, pixels: np.ndarray, alpha: np.ndarray, f_hat: np.ndarray, b_hat: np.ndarray
) -> np.ndarray:
    """Writes into ``out`` (and returns it), where alpha is soft, the full-resolution step
    F = F^ + a(I - aF^ - (1 - a)B^) from the small estimates F^ and B^ (float32, [0, 1])."""
    h, w = alpha.shape
    small = (f_hat.shape[1], f_hat.shape[0])
    up_f = _Upsampler(np.ascontiguousarray(f_hat * 255), small, (w, h))
    up_b = _Upsampler(np.ascontiguousarray(b_hat * 255), small, (w, h))
    starts = np.arange(0, w, BLOCK)
    for y0 in range(0, h, BLOCK):
        y1 = min(h, y0 + BLOCK)
        soft = cv2.inRange(alpha[y0:y1], *SOFT)
        cols = cv2.reduce(soft, 0, cv2.REDUCE_MAX).ravel()
        if not cols.any():
            continue
        for x0, x1 in _runs(np.maximum.reduceat(cols, starts) > 0, w):
            a = alpha[y0:y1, x0:x1, None].astype(np.float32) / 255
            f = up_f.block(y0, y1, x0, x1)
            b = up_b.block(y0, y1, x0, x1)
            img = pixels[y0:y1, x0:x1].astype(np.float32)
            est = f + a * (img - a * f - (1 - a) * b)
            est_u8 = np.clip(est, 0, 255).round().astype(np.uint8)
            np.copyto(out[y0:y1, x0:x1], est_u8, where=soft[:, x0:x1, None] > 0)
    return out
