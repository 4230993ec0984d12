"""The temporal benchmark's clip and metric, so its numbers keep their meaning. No test
here measures time."""

from __future__ import annotations

import math

import numpy as np
from benchmarks.drawn_clip import make_clip, speeds
from benchmarks.temporal import dt_ssd


def test_the_clip_is_deterministic_and_its_subject_holds_then_walks() -> None:
    a, b = make_clip(9, (320, 180)), make_clip(9, (320, 180))
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    assert a.travel == speeds(9, held=True)
    assert a.travel[0] == 0 and a.travel[-1] == 0 and max(a.travel) > 0
    alpha = a.alphas[0]
    assert alpha.min() == 0 and alpha.max() == 1
    assert ((alpha > 0) & (alpha < 1)).mean() > 0.01  # strands and edges: a soft band
    # Travelling frames (here at half speed, easing in) move the alpha more than held ones.
    held = np.abs(a.alphas[1] - a.alphas[0]).sum()
    walking = np.abs(a.alphas[5] - a.alphas[4]).sum()
    assert walking > 1.5 * held


def test_dtssd_is_zero_for_the_truth_and_for_a_steady_offset() -> None:
    rng = np.random.default_rng(0)
    g0, g1 = rng.random((20, 30), np.float32), rng.random((20, 30), np.float32)
    exact = [np.round(g * 255).astype(np.uint8) for g in (g0, g1)]
    q0, q1 = (e.astype(np.float32) / 255 for e in exact)
    assert max(dt_ssd(exact[1], exact[0], q1, q0)) < 1e-5
    offset = [np.clip(e.astype(np.int16) + 7, 0, 255).astype(np.uint8) for e in exact]
    shifted = [o.astype(np.float32) / 255 - 7 / 255 for o in offset]
    paper, _ = dt_ssd(offset[1], offset[0], shifted[1], shifted[0])
    assert paper < 1e-5


def test_dtssd_sums_over_pixels_and_the_rms_form_normalises() -> None:
    still = np.zeros((20, 30), np.float32)
    before = np.zeros((20, 30), np.uint8)
    after = before.copy()
    after[3, 4] = 255  # one pixel flips fully: one unit of error
    after[5, 6] = 255
    paper, rms = dt_ssd(after, before, still, still)
    assert math.isclose(paper, math.sqrt(2), rel_tol=1e-6)
    assert math.isclose(rms, math.sqrt(2 / 600) * 100, rel_tol=1e-6)
