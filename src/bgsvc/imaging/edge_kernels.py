"""The edge step's per-pixel loops, compiled by numba (already here: pymatting's solver is
written in it).

One pass per stage over each pixel, with no temporaries: the same arithmetic in numpy took
about sixty passes over whole planes for the guided filter's fit (32 ms of a 2 MP photo's
55), and the full-resolution steps went through 64-px blocks of float copies. Each kernel
holds no GIL, like the OpenCV calls around it, and the row-wise ones take a range of rows,
so that a caller can run bands of one call on several threads (bgsvc.imaging.bands).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from numba import njit

F = TypeVar("F", bound=Callable[..., Any])


def _compiled(fn: F) -> F:
    """``fn`` compiled for the arrays it is called with, the code cached on disk (numba's
    cache directory: NUMBA_CACHE_DIR in the images, beside this file otherwise)."""
    return cast(F, njit(cache=True, nogil=True)(fn))


def _inlined(fn: F) -> F:
    """A small helper of the kernels, compiled into each of them."""
    return cast(F, njit(cache=True, nogil=True, inline="always")(fn))


_ONE = np.float32(1)
_HALF = np.float32(0.5)


@_inlined
def _reflect(i: int, n: int) -> int:
    """Index ``i`` of a line of ``n`` samples mirrored at its ends as OpenCV's BORDER_REFLECT
    does (fedcba|abcdefgh|hgfedcb), the border of the box filters this replaced."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - i - 1
    return i


@_inlined
def _shift_rows(col: np.ndarray, guide: np.ndarray, p: np.ndarray, y_in: int, y_out: int) -> None:
    """Moves the column sums ``col`` (int32 Wx13: r, g, b, p, then rp, gp, bp, rr, rg, rb,
    gg, gb, bb) a row down: row ``y_in`` enters, row ``y_out`` leaves (-1: none)."""
    w = p.shape[1]
    for x in range(w):
        r = np.int32(guide[y_in, x, 0])
        g = np.int32(guide[y_in, x, 1])
        b = np.int32(guide[y_in, x, 2])
        q = np.int32(p[y_in, x])
        if y_out >= 0:
            r2 = np.int32(guide[y_out, x, 0])
            g2 = np.int32(guide[y_out, x, 1])
            b2 = np.int32(guide[y_out, x, 2])
            q2 = np.int32(p[y_out, x])
        else:
            r2 = g2 = b2 = q2 = np.int32(0)
        col[x, 0] += r - r2
        col[x, 1] += g - g2
        col[x, 2] += b - b2
        col[x, 3] += q - q2
        col[x, 4] += r * q - r2 * q2
        col[x, 5] += g * q - g2 * q2
        col[x, 6] += b * q - b2 * q2
        col[x, 7] += r * r - r2 * r2
        col[x, 8] += r * g - r2 * g2
        col[x, 9] += r * b - r2 * b2
        col[x, 10] += g * g - g2 * g2
        col[x, 11] += g * b - g2 * b2
        col[x, 12] += b * b - b2 * b2


@_compiled
def fit(
    guide: np.ndarray,
    p: np.ndarray,
    radius: int,
    eps: float,
    near: np.ndarray,
    out: np.ndarray,
    y0: int,
    y1: int,
) -> None:
    """The colour guided filter's coefficients [a_r, a_g, a_b, b] (float32 4xHxW, for I and
    p in [0, 1]) of ``guide`` (uint8 HxWx3) and ``p`` (uint8 HxW) over (2r+1)^2 windows,
    borders reflected: the window sums of r, g, b, p and their nine products, exact in
    int32, kept as running sums (a column's over the window's rows, then along the row),
    and the 3x3 covariance plus eps inverted by cofactors (symmetric, positive definite).
    Where ``near`` (uint8 HxW) is 0 the matte is flat over the window, so a = 0 and b is
    the window's mean matte, without the solve. Rows ``y0`` to ``y1`` of ``out`` only.

    One pass, nothing the size of the grid but ``out``: thirteen planes of products and
    box sums took 24 ms of a 1024 x 1024 grid, running sums about a fifth of that."""
    h, w = p.shape
    if h == 0 or w == 0:
        return  # nothing to fit, and no line to reflect into
    k = 2 * radius + 1
    n = k * k
    s1 = np.float32(1 / (255 * n))
    s2 = np.float32(1 / (65025 * n))
    e = np.float32(eps)
    zero = np.float32(0)
    col = np.zeros((w, 13), np.int32)
    for d in range(-radius, radius + 1):
        _shift_rows(col, guide, p, _reflect(y0 + d, h), -1)
    ext = np.empty(w + 2 * radius, np.int64)
    for j in range(w + 2 * radius):
        ext[j] = _reflect(j - radius, w)
    # The row's window sums, slid along x. Where the matte is flat (near is 0) only p's is
    # needed: the others are summed again from the columns where near starts again.
    win = np.zeros(13, np.int32)
    for y in range(y0, y1):
        whole = False
        for x in range(w):
            if near[y, x] == 0:
                if x == 0:
                    acc = np.int32(0)
                    for j in range(k):
                        acc += col[ext[j], 3]
                    win[3] = acc
                else:
                    win[3] += col[ext[x + 2 * radius], 3] - col[ext[x - 1], 3]
                whole = False
                out[0, y, x] = zero
                out[1, y, x] = zero
                out[2, y, x] = zero
                out[3, y, x] = np.float32(win[3]) * s1
                continue
            if whole:
                enter = ext[x + 2 * radius]
                leave = ext[x - 1]
                for c in range(13):
                    win[c] += col[enter, c] - col[leave, c]
            else:
                for c in range(13):
                    win[c] = 0
                for j in range(x, x + k):
                    for c in range(13):
                        win[c] += col[ext[j], c]
                whole = True
            mp = np.float32(win[3]) * s1
            mr = np.float32(win[0]) * s1
            mg = np.float32(win[1]) * s1
            mb = np.float32(win[2]) * s1
            cr = np.float32(win[4]) * s2 - mr * mp
            cg = np.float32(win[5]) * s2 - mg * mp
            cb = np.float32(win[6]) * s2 - mb * mp
            rr = np.float32(win[7]) * s2 - mr * mr + e
            rg = np.float32(win[8]) * s2 - mr * mg
            rb = np.float32(win[9]) * s2 - mr * mb
            gg = np.float32(win[10]) * s2 - mg * mg + e
            gb = np.float32(win[11]) * s2 - mg * mb
            bb = np.float32(win[12]) * s2 - mb * mb + e
            i_rr = gg * bb - gb * gb
            i_rg = gb * rb - rg * bb
            i_rb = rg * gb - gg * rb
            i_gg = rr * bb - rb * rb
            i_gb = rb * rg - rr * gb
            i_bb = rr * gg - rg * rg
            inv_det = _ONE / (rr * i_rr + rg * i_rg + rb * i_rb)
            a_r = (i_rr * cr + i_rg * cg + i_rb * cb) * inv_det
            a_g = (i_rg * cr + i_gg * cg + i_gb * cb) * inv_det
            a_b = (i_rb * cr + i_gb * cg + i_bb * cb) * inv_det
            out[0, y, x] = a_r
            out[1, y, x] = a_g
            out[2, y, x] = a_b
            out[3, y, x] = mp - a_r * mr - a_g * mg - a_b * mb
        if y + 1 < y1:
            _shift_rows(col, guide, p, _reflect(y + 1 + radius, h), _reflect(y - radius, h))


@_compiled
def _taps(n_out: int, n_src: int, scale: float, origin: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index, the first source index of its bilinear pair and the second's
    weight, with OpenCV's half-pixel centres, clamped to a source of n_src samples that
    starts at ``origin`` of the full small grid."""
    first = np.empty(n_out, np.int64)
    weight = np.empty(n_out, np.float32)
    for i in range(n_out):
        s = (i + 0.5) * scale - 0.5 - origin
        if s <= 0:
            first[i] = 0
            weight[i] = 0
        elif s >= n_src - 1:
            first[i] = max(n_src - 2, 0)
            weight[i] = 1 if n_src > 1 else 0
        else:
            j = int(s)
            first[i] = j
            weight[i] = s - j
    return first, weight


@_inlined
def _weights(
    fy: np.float32, fx: np.float32
) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """The four bilinear weights of a sample fy, fx past its top-left neighbour."""
    gy = _ONE - fy
    gx = _ONE - fx
    return gy * gx, gy * fx, fy * gx, fy * fx


@_compiled
def apply_guided(
    coef: np.ndarray,
    grid: tuple[int, int],
    origin: tuple[int, int],
    guide: np.ndarray,
    out: np.ndarray,
    span: tuple[int, int, int, int],
    active: np.ndarray,
) -> None:
    """q = a . I + b with a and b (``coef``: float32 4xhxw, a crop of a small grid of size
    ``grid`` (w, h) that starts at ``origin`` (x, y); b scaled to 0-255) enlarged
    bilinearly to ``guide``'s size (uint8 HxWx3), written as uint8 into ``out`` for the
    pixels in ``span`` (y0, y1, x0, x1) that sample a cell where ``active`` (uint8 hxw) is
    not 0. Elsewhere a is 0 and ``out`` already holds b enlarged."""
    h, w = out.shape
    ch, cw = coef.shape[1:]
    y0, y1, x0, x1 = span
    ys, wy = _taps(h, ch, grid[1] / h, origin[1])
    xs, wx = _taps(w, cw, grid[0] / w, origin[0])
    step = 1 if cw > 1 else 0
    # A grid row with nothing active, and the row below it likewise: the photo's rows that
    # sample only those two are left as they are.
    row_active = np.zeros(ch, np.bool_)
    for j in range(ch):
        for i in range(cw):
            if active[j, i] != 0:
                row_active[j] = True
                break
    for y in range(y0, y1):
        j = ys[y]
        j2 = min(j + 1, ch - 1)
        if not (row_active[j] or row_active[j2]):
            continue
        fy = wy[y]
        for x in range(x0, x1):
            i = xs[x]
            i2 = i + step
            if (active[j, i] | active[j, i2] | active[j2, i] | active[j2, i2]) == 0:
                continue
            w00, w01, w10, w11 = _weights(fy, wx[x])
            q = (
                coef[3, j, i] * w00
                + coef[3, j, i2] * w01
                + coef[3, j2, i] * w10
                + coef[3, j2, i2] * w11
            )
            for c in range(3):
                k = (
                    coef[c, j, i] * w00
                    + coef[c, j, i2] * w01
                    + coef[c, j2, i] * w10
                    + coef[c, j2, i2] * w11
                )
                q += k * np.float32(guide[y, x, c])
            out[y, x] = 0 if q <= 0 else (255 if q >= 255 else np.uint8(q + _HALF))


@_compiled
def correct(
    pixels: np.ndarray,
    alpha: np.ndarray,
    f: np.ndarray,
    b: np.ndarray,
    soft: tuple[int, int],
    out: np.ndarray,
    y0: int,
    y1: int,
) -> None:
    """Where ``alpha`` (uint8 HxW) is within ``soft``, writes into ``out`` (uint8 HxWx3)
    F = F^ + a(I - aF^ - (1 - a)B^), with F^ and B^ (``f``, ``b``: float32 hxwx3 in 0-255)
    enlarged bilinearly to the photo's size; rows ``y0`` to ``y1`` only."""
    h, w = alpha.shape
    sh, sw = f.shape[:2]
    ys, wy = _taps(h, sh, sh / h, 0)
    xs, wx = _taps(w, sw, sw / w, 0)
    lo, hi = soft
    step = 1 if sw > 1 else 0
    s1 = np.float32(1 / 255)
    for y in range(y0, y1):
        j = ys[y]
        j2 = min(j + 1, sh - 1)
        fy = wy[y]
        for x in range(w):
            a8 = alpha[y, x]
            if a8 < lo or a8 > hi:
                continue
            a = np.float32(a8) * s1
            i = xs[x]
            i2 = i + step
            w00, w01, w10, w11 = _weights(fy, wx[x])
            for c in range(3):
                fc = f[j, i, c] * w00 + f[j, i2, c] * w01 + f[j2, i, c] * w10 + f[j2, i2, c] * w11
                bc = b[j, i, c] * w00 + b[j, i2, c] * w01 + b[j2, i, c] * w10 + b[j2, i2, c] * w11
                est = fc + a * (np.float32(pixels[y, x, c]) - a * fc - (_ONE - a) * bc)
                out[y, x, c] = 0 if est <= 0 else (255 if est >= 255 else np.uint8(est + _HALF))


@_inlined
def _unit(v: np.float32) -> np.float32:
    """``v`` clamped to [0, 1]."""
    return min(max(v, np.float32(0)), _ONE)


@_compiled
def _nearest(src: np.ndarray, h: int, w: int) -> np.ndarray:
    """``src`` (float32 HxWxC) at h x w by nearest neighbour, as pymatting's pyramid makes
    its levels (each sampled from the finest, not from the level below); ``src`` itself at
    its own size."""
    hs, ws, depth = src.shape
    if hs == h and ws == w:
        return src
    dst = np.empty((h, w, depth), np.float32)
    for y in range(h):
        ys = min(hs - 1, y * hs // h)
        for x in range(w):
            xs = min(ws - 1, x * ws // w)
            for c in range(depth):
                dst[y, x, c] = src[ys, xs, c]
    return dst


@_compiled
def foreground_ml(
    image: np.ndarray,
    alpha: np.ndarray,
    prior: np.ndarray,
    weight: np.ndarray,
    iterations: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """F and B (float32 HxWx3 in [0, 1]) such that I = aF + (1 - a)B (``alpha`` float32
    HxWx1), both smooth where alpha is, and B near ``prior`` (float32 HxWx3) by ``weight``
    (float32 HxWx1; both any size, sampled level by level): Germer et al.'s multilevel
    solver as pymatting writes it (regularisation 1e-5, gradient weight 1) plus that
    prior. ``iterations``: (on a coarse level, on a fine one, the long edge up to which a
    level is coarse).

    Why the prior: where alpha is soft and wide (a veil, smoke), I = aF + (1 - a)B holds
    for a whole line of (F, B) pairs, and smoothness alone picks one by what surrounds the
    region: F leaned towards the opaque subject's colour next to it and B took the rest
    (the veil's colour error fell only 27 %). The clear background carried inwards decides
    it instead."""
    h0, w0 = alpha.shape[:2]
    f_mean = np.zeros(3, np.float32)
    b_mean = np.zeros(3, np.float32)
    n_f = n_b = 0
    for y in range(h0):
        for x in range(w0):
            if alpha[y, x, 0] > 0.9:
                f_mean += image[y, x]
                n_f += 1
            if alpha[y, x, 0] < 0.1:
                b_mean += image[y, x]
                n_b += 1
    f_prev = np.zeros((1, 1, 3), np.float32) + f_mean / np.float32(n_f + 1e-5)
    b_prev = np.zeros((1, 1, 3), np.float32) + b_mean / np.float32(n_b + 1e-5)
    levels = int(np.ceil(np.log2(max(w0, h0, 2))))
    reg = np.float32(1e-5)
    dx = (-1, 1, 0, 0)
    dy = (0, 0, -1, 1)
    for level in range(levels + 1):
        w = round(w0 ** (level / levels))
        h = round(h0 ** (level / levels))
        img = _nearest(image, h, w)
        al = _nearest(alpha, h, w)
        bp = _nearest(prior, h, w)
        lw = _nearest(weight, h, w)
        # Copies: the solver updates them in place.
        fg = _nearest(f_prev, h, w).copy()
        bg = _nearest(b_prev, h, w).copy()
        coarse = max(w, h) <= iterations[2]
        for _ in range(iterations[0] if coarse else iterations[1]):
            for y in range(h):
                for x in range(w):
                    a0 = al[y, x, 0]
                    a1 = _ONE - a0
                    lam = lw[y, x, 0]
                    a00 = a0 * a0
                    a01 = a0 * a1
                    a11 = a1 * a1 + lam
                    f0, f1, f2 = a0 * img[y, x, 0], a0 * img[y, x, 1], a0 * img[y, x, 2]
                    b0 = a1 * img[y, x, 0] + lam * bp[y, x, 0]
                    b1 = a1 * img[y, x, 1] + lam * bp[y, x, 1]
                    b2 = a1 * img[y, x, 2] + lam * bp[y, x, 2]
                    for d in range(4):
                        x2 = max(0, min(w - 1, x + dx[d]))
                        y2 = max(0, min(h - 1, y + dy[d]))
                        da = reg + abs(a0 - al[y2, x2, 0])
                        a00 += da
                        a11 += da
                        f0 += da * fg[y2, x2, 0]
                        f1 += da * fg[y2, x2, 1]
                        f2 += da * fg[y2, x2, 2]
                        b0 += da * bg[y2, x2, 0]
                        b1 += da * bg[y2, x2, 1]
                        b2 += da * bg[y2, x2, 2]
                    inv = _ONE / (a00 * a11 - a01 * a01)
                    fg[y, x, 0] = _unit(inv * (a11 * f0 - a01 * b0))
                    fg[y, x, 1] = _unit(inv * (a11 * f1 - a01 * b1))
                    fg[y, x, 2] = _unit(inv * (a11 * f2 - a01 * b2))
                    bg[y, x, 0] = _unit(inv * (a00 * b0 - a01 * f0))
                    bg[y, x, 1] = _unit(inv * (a00 * b1 - a01 * f1))
                    bg[y, x, 2] = _unit(inv * (a00 * b2 - a01 * f2))
        f_prev = fg
        b_prev = bg
    return f_prev, b_prev
