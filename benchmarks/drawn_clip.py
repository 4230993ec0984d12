"""The drawn clip with a known alpha that the temporal benchmarks measure on: a head with
an anti-aliased outline, blurred shoulders and ~150 swaying 1-3 px strands, breathing,
over a cluttered textured background that pans, with fresh sensor grain each frame
(benchmarks.temporal's docstring says more). Deterministic in the seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from benchmarks.matting import _background, _noise
from bgsvc.imaging.opencv import cv2


@dataclass(frozen=True)
class Clip:
    frames: list[np.ndarray]  # uint8 HxWx3 RGB
    alphas: list[np.ndarray]  # float32 HxW in [0, 1]
    travel: list[float]  # the subject's speed at each frame, 0 (held) to 1


# -- the clip -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Strand:
    angle: float  # where it grows on the head's outline
    heading: float  # its direction there, relative to the outward normal
    bend: float
    length: float
    thickness: int
    opacity: int
    phase: float
    sway: float


def _strands(rng: np.random.Generator, count: int, scale: float) -> list[_Strand]:
    out = []
    for _ in range(count):
        out.append(
            _Strand(
                angle=rng.uniform(-math.pi * 0.95, -math.pi * 0.05),
                heading=rng.normal(0, 0.35),
                bend=rng.normal(0, 0.012),
                length=rng.uniform(60, 260) * scale,
                thickness=int(rng.choice([1, 1, 2, 3])),
                opacity=int(rng.choice([130, 190, 255])),
                phase=rng.uniform(0, 2 * math.pi),
                sway=rng.uniform(0.0005, 0.0015),
            )
        )
    return out


def _draw_strands(
    strands: list[_Strand],
    size: tuple[int, int],
    centre: tuple[float, float],
    radii: tuple[float, float],
    t: float,
    seed: int,
    motion: float,
) -> np.ndarray:
    w, h = size
    rng = np.random.default_rng(seed)  # the same wiggle every frame: a strand keeps its shape
    layer = np.zeros((h, w), np.uint8)
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    step = max(1.0, 3.0 * w / 1280)
    for s in strands:
        x = centre[0] + radii[0] * 0.97 * math.cos(s.angle)
        y = centre[1] + radii[1] * 0.97 * math.sin(s.angle)
        heading = s.angle + s.heading
        # Swaying: the strand curls a little more or less, more towards its tip.
        bend = s.bend + motion * s.sway * math.sin(2 * math.pi * t / 30 + s.phase)
        points = []
        for _ in range(int(s.length / step)):
            points.append((x, y))
            heading += bend + rng.normal(0, 0.02)
            x += step * math.cos(heading)
            y += step * math.sin(heading)
        poly = np.round(np.array(points) * 16).astype(np.int32)
        groups.setdefault((s.thickness, s.opacity), []).append(poly)
    for (thickness, opacity), polys in sorted(groups.items()):
        cv2.polylines(layer, polys, False, opacity, thickness, cv2.LINE_AA, shift=4)
    return layer


def _shifted(img: np.ndarray, dx: float, dy: float, size: tuple[int, int]) -> np.ndarray:
    """``img`` moved by (-dx, -dy) and cropped to ``size``: a sub-pixel pan."""
    m = np.float32([[1, 0, -dx], [0, 1, -dy]])
    return cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def speeds(frames: int, held: bool) -> list[float]:
    """How fast the subject travels at each frame, 0-1: ``held``, it holds still for the
    first third, walks across the middle third (easing in and out over 4 frames) and holds
    again; otherwise it travels throughout."""
    if not held:
        return [1.0] * frames
    a, b = frames // 3, 2 * frames // 3
    return [min(i - a + 1, b - i, 4) / 4 if a <= i < b else 0.0 for i in range(frames)]


def make_clip(
    frames: int = 60,
    size: tuple[int, int] = (960, 540),
    seed: int = 0,
    motion: float = 1.0,
    held: bool = True,
) -> Clip:
    """The drawn clip and its true alpha (deterministic in ``seed``). At ``motion`` 1 a
    travelling subject moves 2.5 px a frame at 1280 px wide (a walk across a medium shot,
    the camera half following: the background pans up to 2 px a frame); a held one still
    breathes and sways, at 40 % of that amplitude, over a background that drifts 0.5 px a
    frame (pixel figures scale with the width)."""
    w, h = size
    scale = w / 1280
    rng = np.random.default_rng([seed, 7])
    margin = (int(2 * max(motion, 1) * frames * scale) + 16, int(6 * motion) + 16)
    bg_big = _background("busy", rng, (w + margin[0], h + margin[1]))
    # The subject's own texture, larger than the frame: it moves with the subject.
    fmargin = 400
    fsize = (w + fmargin, h + fmargin)
    t_hair = np.clip(_noise(rng, fsize, 12, 4) * 1.5 + 0.5, 0, 1)[..., None]
    hair_rgb = np.array([60, 40, 25], np.float32) + t_hair * np.array([50, 35, 20], np.float32)
    skin = np.array([225, 175, 150], np.float32) + 25 * _noise(rng, fsize, 20, 3)[..., None]
    shirt = np.array([70, 80, 160], np.float32) + 20 * _noise(rng, fsize, 30, 3)[..., None]
    strands = _strands(rng, max(60, int(200 * scale)), scale)
    strand_seed = int(rng.integers(1 << 30))
    out_frames, out_alphas = [], []
    travel = speeds(frames, held)
    x, pan = w * 0.36, 0.0
    for i in range(frames):
        t = float(i)
        v = travel[i] * motion
        x += 2.5 * scale * v
        pan += (0.5 + 1.5 * v) * scale
        cx = x + 5 * v * scale * math.sin(t / 5)
        cy = h * 0.46 + 4 * v * scale * math.sin(t / 7)
        # Breathing and sway never stop; held, they are smaller.
        alive = motion * (0.4 + 0.6 * travel[i])
        breathe = 0.02 * alive * math.sin(2 * math.pi * t / 24)
        radii = (w * 0.13 * (1 + breathe), h * 0.22 * (1 - breathe))
        head = np.zeros((h, w), np.uint8)
        cv2.ellipse(head, ((cx, cy), (2 * radii[0], 2 * radii[1]), 0), 255, -1, cv2.LINE_AA)
        body = np.zeros((h, w), np.uint8)
        cv2.ellipse(
            body,
            ((cx + 0.3 * (cx - w / 2), h * 1.05), (w * 0.5, h * 0.62), 0),
            255,
            -1,
            cv2.LINE_AA,
        )
        body = cv2.GaussianBlur(body, (0, 0), max(1.0, 4 * scale))
        hair = _draw_strands(strands, size, (cx, cy), radii, t, strand_seed, alive)
        alpha = np.maximum(np.maximum(head, body), hair).astype(np.float32) / 255

        ox, oy = fmargin / 2 - (cx - w / 2), fmargin / 2
        hw = (hair > 0).astype(np.float32)[..., None]
        bw = np.clip(body.astype(np.float32) / 255 * 20, 0, 1)[..., None]
        fg_skin = _shifted(skin, ox, oy, size)
        fg_shirt = _shifted(shirt, ox, oy, size)
        fg_hair = _shifted(hair_rgb, ox, oy, size)
        subject = fg_skin * (1 - bw) + fg_shirt * bw
        subject = fg_hair * hw + subject * (1 - hw)
        bg = _shifted(bg_big, pan, margin[1] / 2 + 3 * v * math.sin(t / 6), size)
        a = alpha[..., None]
        grain = np.random.default_rng([seed, 8, i]).normal(0, 2.0, (h, w, 1)).astype(np.float32)
        image = a * subject + (1 - a) * bg + grain
        out_frames.append(np.round(np.clip(image, 0, 255)).astype(np.uint8))
        out_alphas.append(alpha)
    return Clip(out_frames, out_alphas, travel)
