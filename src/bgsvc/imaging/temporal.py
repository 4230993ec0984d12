"""Temporally stable mattes for video: an online smoother called once per frame.

A matting model run on each frame alone answers each frame alone: where the photo holds
still, its matte still wobbles by a few levels, and soft edges and strands shimmer. The
smoother keeps its previous output and, per pixel, blends it into the new matte where
the photo shows the same thing as before, and takes the new matte where it does not:

    out_t = k * out_{t-1} + (1 - k) * matte_t
    k = strength * trust_photo(residual) * trust_matte(|out_{t-1} - matte_t|)

``residual`` is how far the new photo differs from the previous one (grey levels,
box-averaged on a reduced copy); ``trust_photo`` falls from 1 to 0 between
``trust_levels``, so wherever the photo changed (motion, occlusion, a lighting change)
the new matte is taken whole. ``trust_matte`` falls from 1 to 0 between
``matte_levels``: a change of the matte larger than flicker wins even where the photo
looks unchanged, which bounds any trail or lag the smoother can leave at
``max_departure`` levels from the frame's own matte (10.8 at the defaults). A scene cut
(most of the frame changed) drops the history.

``motion=True`` first carries the previous frame and output along OpenCV's DIS optical
flow (Kroeger et al., ECCV 2016, ULTRAFAST preset), so moving edges keep some smoothing
too. On the benchmark it won 1-3 points of dtSSD for about 6 ms more per 1080p frame, so
it is not the default; benchmarks/RESULTS.md has the numbers.

The analysis (grey copy, flow, residual, weights) runs on a copy with a long edge of
``work_edge``; only the blend runs at full size, as one compiled pass that enlarges the
weight (and flow) bilinearly as it goes (no full-size float plane is made).

Segments: a smoother is state for one shot. ``reset()`` (or a new smoother) starts a
segment; the first frame of a segment is the model's matte as it is, and the smoothing
reaches its full effect over the next few frames (the weight of the history grows as
1 - strength**n), so a boundary costs one unsmoothed frame and no extra computation
(the first frame of a segment is cheaper: only the reduced copy is made). A frame of
another size than the last one starts a segment too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from bgsvc.imaging.opencv import cv2

# The blend's weight on the history where the photo did not change. Flicker that is
# independent from frame to frame shrinks in the frame-to-frame difference by
# (1 - s) / sqrt(1 + s) (0.32 at 0.6) where the history is fully trusted; a larger weight
# smooths more but lags further behind a change the residual misses, and widens the
# bound on that lag (benchmarks/RESULTS.md: 0.75 and 0.4 against 0.6).
STRENGTH = 0.6
# The residual (grey levels, 0-255, after a box average at the analysis size) below which
# the history is fully trusted and above which it is not at all.
TRUST_LEVELS = (4.0, 12.0)
# How far (0-255) the carried history may be from the new matte and still be fully
# trusted, and from where it is not trusted at all. This bounds any trail the smoother can
# leave: the output is never further than strength * high**2 / (4 * (high - low)) levels
# from the new matte (max_departure).
MATTE_LEVELS = (16.0, 48.0)
# The long edge of the analysis copy. The weights (and the flow) are smooth; the blend
# itself is at full size, so hair detail comes from the new matte and the history.
WORK_EDGE = 480
# A frame where more than this share of the analysis pixels is unexplained by the motion
# (residual above CUT_LEVEL) is a new shot: the history is dropped. On the benchmark's
# clip the share never passed 1.2 %, walking subject and panning camera included; between
# two unrelated textures it was 70 %. A false cut costs one unsmoothed frame, no more.
CUT_SHARE = 0.5
CUT_LEVEL = 16.0
# How much better (grey levels) the flow must explain a pixel than holding still.
STILL_MARGIN = 0.0


class TemporalSmoother:
    """Online matte smoothing for one video segment, one ``step`` per frame in order.

    ``strength`` 0 turns it off: ``step`` then returns a copy of each matte, unchanged.
    ``motion=True`` compensates motion with optical flow (see the module's docstring).
    Not thread-safe: one smoother per stream.
    """

    def __init__(
        self,
        strength: float = STRENGTH,
        *,
        motion: bool = False,
        work_edge: int = WORK_EDGE,
        trust_levels: tuple[float, float] = TRUST_LEVELS,
        matte_levels: tuple[float, float] = MATTE_LEVELS,
        cut_share: float = CUT_SHARE,
    ) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"strength must be in [0, 1), not {strength}")
        low, high = trust_levels
        if not 0.0 <= low < high:
            raise ValueError(f"trust_levels must be 0 <= low < high, not {trust_levels}")
        if work_edge < 16:
            raise ValueError(f"work_edge must be at least 16, not {work_edge}")
        self.strength = float(strength)
        self.motion = motion
        self.work_edge = int(work_edge)
        self.trust_levels = (float(low), float(high))
        self.matte_levels = (float(matte_levels[0]), float(matte_levels[1]))
        if not 0.0 <= self.matte_levels[0] < self.matte_levels[1]:
            raise ValueError(f"matte_levels must be 0 <= low < high, not {matte_levels}")
        self.cut_share = float(cut_share)
        self.cuts = 0  # how many scene cuts were detected, for logs and tests
        self._flow: Any = None  # cv2.DISOpticalFlow, made on first use
        self._grey: np.ndarray | None = None  # the last frame's analysis copy
        self._out: np.ndarray | None = None  # the last output, full size

    @property
    def max_departure(self) -> float:
        """The most (0-255 levels) an output pixel can differ from the frame's own matte:
        the bound on any ghost or lag the smoother can leave."""
        low, high = self.matte_levels
        # k(d) * d with k falling linearly from 1 at low to 0 at high is largest at
        # d = high / 2 when low < high / 2, else at d = low.
        worst = high * high / (4 * (high - low)) if low < high / 2 else low
        return self.strength * worst

    def reset(self) -> None:
        """Forget the history: the next frame starts a new segment."""
        self._grey = None
        self._out = None

    def step(self, rgb: np.ndarray, matte: np.ndarray) -> np.ndarray:
        """The smoothed matte (uint8 HxW, a new array) of the next frame, given its photo
        ``rgb`` (uint8 HxWx3) and its model matte ``matte`` (uint8 HxW, the photo's size)."""
        _check(rgb, matte)
        if self.strength == 0.0:
            return matte.copy()
        # One layout for the kernel: a strided view would compile another variant (seconds)
        # in the middle of a stream.
        matte = np.ascontiguousarray(matte)
        grey = self._analysis_copy(rgb)
        prev, prev_out = self._grey, self._out
        if prev is None or prev_out is None or prev_out.shape != matte.shape:
            out = matte.copy()
        else:
            flow = self._motion(grey, prev)
            residual = self._residual(grey, prev, flow)
            if float(np.mean(residual > CUT_LEVEL)) > self.cut_share:
                self.cuts += 1
                out = matte.copy()
            else:
                weight = self._weight(residual)
                out = np.empty_like(matte)
                # A flow that is zero everywhere (off, or holding still explained every
                # pixel) is not interpolated per pixel.
                moving = self.motion and bool(flow.any())
                _blend(matte, prev_out, flow, weight, self.matte_levels, moving, out)
        self._grey, self._out = grey, out
        return out

    def _analysis_copy(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.work_edge / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # Grey after the reduction: a third of the pixels to convert.
        small = rgb if scale == 1.0 else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        grey: np.ndarray = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
        return grey

    def _motion(self, grey: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """Per analysis pixel of the new frame, where it was in the previous one (float32
        HxWx2, analysis pixels); zeros without motion compensation."""
        if not self.motion or min(grey.shape) < 8:
            return np.zeros((*grey.shape, 2), np.float32)
        if self._flow is None:
            # The stubs lack the DIS factory; it is in every OpenCV 4 build.
            dis: Any = cv2
            self._flow = dis.DISOpticalFlow_create(dis.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        flow: np.ndarray = self._flow.calc(grey, prev, None)
        return flow

    def _residual(self, grey: np.ndarray, prev: np.ndarray, flow: np.ndarray) -> np.ndarray:
        """How far each analysis pixel of the new frame is from the previous frame carried
        by ``flow`` (grey levels, box-averaged). Where holding still explains the new frame
        as well, the flow is set to zero in place: a flow fitted to noise or to a
        featureless area would otherwise move (and blur) a matte that did not move."""
        still = self._box_diff(grey, prev)
        if not self.motion:
            return still
        h, w = grey.shape
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        carried = cv2.remap(
            prev,
            xs + flow[..., 0],
            ys + flow[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        moved = self._box_diff(grey, carried)
        keep_still = still <= moved + STILL_MARGIN
        flow[keep_still] = 0.0
        residual: np.ndarray = np.where(keep_still, still, moved)
        return residual

    @staticmethod
    def _box_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # A box average: sensor noise is independent per pixel, a change is not.
        out: np.ndarray = cv2.blur(cv2.absdiff(a, b).astype(np.float32), (3, 3))
        return out

    def _weight(self, residual: np.ndarray) -> np.ndarray:
        low, high = self.trust_levels
        ramp = np.clip((high - residual) / (high - low), 0.0, 1.0)
        # A changed pixel's neighbours follow the new matte too: the blend enlarges the
        # weights bilinearly, and a motion edge must not leak half the history into the
        # full-size pixels beside it.
        trust = cv2.erode(ramp, np.ones((3, 3), np.uint8))
        weight: np.ndarray = (trust * self.strength).astype(np.float32)
        return weight


class VideoMattes:
    """A video's mattes smoothed at two scales, in frame order (one per video or segment).

    ``coarse`` takes the model's own matte on its grid, before the edge step enlarges it,
    with the photo reduced to that grid, and carries the history along the optical flow:
    the model's flicker is smoothed where it arises, and the edge step then fits the
    smoothed matte to the current photo's edges. ``fine`` smooths the enlarged matte at
    the frame's size, where the edge step's own flicker on strands and soft edges shows.
    On benchmarks/temporal.py's clip the two together cut dtSSD by 31 % against 21 % for
    ``fine`` alone, at a lower per-frame error (benchmarks/RESULTS.md)."""

    def __init__(self, strength: float = STRENGTH) -> None:
        self._coarse = TemporalSmoother(strength, motion=True)
        self._fine = TemporalSmoother(strength)

    def coarse(self, photo: np.ndarray, matte: np.ndarray) -> np.ndarray:
        """The model's matte (uint8 HxW, its grid) smoothed; ``photo`` is the frame (uint8
        HxWx3, any size: it is resized to the matte's grid)."""
        h, w = matte.shape
        if photo.shape[:2] != (h, w):
            # Bilinear, not an area average (13 ms from 1080p): the smoother reduces the
            # photo again, by area, to its analysis size, which evens out the aliasing.
            photo = cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR)
        return self._coarse.step(photo, matte)

    def fine(self, photo: np.ndarray, matte: np.ndarray) -> np.ndarray:
        """The enlarged matte smoothed at the frame's size (``photo`` the same size)."""
        return self._fine.step(photo, matte)

    def reset(self) -> None:
        """Forget the history: the next frame starts a shot."""
        self._coarse.reset()
        self._fine.reset()


def preload() -> None:
    """Compile (or load from numba's cache) the blend, as ``step`` calls it, ahead of the
    first frame: a first compile takes seconds."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), np.uint8)
    matte = rng.integers(0, 256, (24, 32), np.uint8)
    for motion in (False, True):
        smoother = TemporalSmoother(motion=motion)
        smoother.step(rgb, matte)
        smoother.step(rgb, matte)


def _check(rgb: np.ndarray, matte: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or not isinstance(matte, np.ndarray):
        raise ValueError("rgb and matte must be numpy arrays")
    if rgb.dtype != np.uint8 or matte.dtype != np.uint8:
        raise ValueError(f"rgb and matte must be uint8, not {rgb.dtype} and {matte.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be HxWx3, not {rgb.shape}")
    if matte.ndim != 2 or matte.shape != rgb.shape[:2]:
        raise ValueError(
            f"matte must be HxW of the photo's size {rgb.shape[:2]}, not {matte.shape}"
        )
    if matte.size == 0:
        raise ValueError("empty frame")


@njit(cache=True, nogil=True, fastmath=True)
def _blend(
    matte: np.ndarray,
    prev: np.ndarray,
    flow: np.ndarray,
    weight: np.ndarray,
    levels: tuple[float, float],
    moving: bool,
    out: np.ndarray,
) -> None:
    """out = k * prev(x + flow) + (1 - k) * matte per full-size pixel, k the photo's weight
    times the matte's trust in the history; the weight and the flow enlarged bilinearly
    from the analysis grid (pixel centres aligned) and the previous output sampled at the
    nearest pixel, clamped at the border. ``moving`` False: the flow is zero everywhere
    and is not read."""
    big_h, big_w = matte.shape
    h, w = weight.shape
    sx = w / big_w
    sy = h / big_h
    one = np.float32(1.0)
    zero = np.float32(0.0)
    half = np.float32(0.5)
    # Horizontal interpolation: the same columns and fractions on every row.
    x0s = np.empty(big_w, np.int64)
    fxs = np.empty(big_w, np.float32)
    for x in range(big_w):
        u = min(max((x + 0.5) * sx - 0.5, 0.0), w - 1.0)
        x0s[x] = min(int(u), w - 2) if w > 1 else 0
        fxs[x] = np.float32(u - x0s[x])
    xsf = np.arange(big_w).astype(np.float32)
    # One full-size row's analysis values interpolated vertically (the weight and the
    # displacement in full-size pixels), then per pixel: the weight and where to sample.
    row = np.empty((3, w + 1), np.float32)
    ks = np.empty(big_w, np.float32)
    ps = np.empty(big_w, np.float32)
    inv_sx = np.float32(1.0 / sx)
    inv_sy = np.float32(1.0 / sy)
    last_x = np.float32(big_w - 1)
    last_y = np.float32(big_h - 1)
    d0 = np.float32(levels[0])
    span = np.float32(max(levels[1] - levels[0], 1e-3))
    for y in range(big_h):
        v = min(max((y + 0.5) * sy - 0.5, 0.0), h - 1.0)
        y0 = min(int(v), h - 2) if h > 1 else 0
        y1 = min(y0 + 1, h - 1)
        fy = np.float32(v - y0)
        for i in range(w):
            row[0, i] = (one - fy) * weight[y0, i] + fy * weight[y1, i]
        row[0, w] = row[0, w - 1]
        for x in range(big_w):
            i = x0s[x]
            ks[x] = max(row[0, i] + fxs[x] * (row[0, i + 1] - row[0, i]), zero)
        if moving:
            for i in range(w):
                row[1, i] = ((one - fy) * flow[y0, i, 0] + fy * flow[y1, i, 0]) * inv_sx
                row[2, i] = ((one - fy) * flow[y0, i, 1] + fy * flow[y1, i, 1]) * inv_sy
            row[1, w] = row[1, w - 1]
            row[2, w] = row[2, w - 1]
            fyy = np.float32(y)
            for x in range(big_w):
                i = x0s[x]
                fx = fxs[x]
                px = xsf[x] + row[1, i] + fx * (row[1, i + 1] - row[1, i])
                py = fyy + row[2, i] + fx * (row[2, i + 1] - row[2, i])
                # Where the flow was zeroed (holding still explains the photo), this is
                # the same pixel: rounding an integer position keeps it.
                px = min(max(px, zero), last_x)
                py = min(max(py, zero), last_y)
                ps[x] = np.float32(prev[int(py + half), int(px + half)])
        else:
            for x in range(big_w):
                ps[x] = np.float32(prev[y, x])
        # No branch per pixel, so that this loop vectorises: where k is 0 or the history
        # equals the matte, the sum is the matte's value plus a half, truncated back.
        for x in range(big_w):
            m = np.float32(matte[y, x])
            p = ps[x]
            # The history is trusted less the further it is from the new matte: a change
            # the photo's residual missed still wins, and the output never strays far.
            trust = min(max((span + d0 - abs(p - m)) / span, zero), one)
            out[y, x] = np.uint8(m + ks[x] * trust * (p - m) + half)
