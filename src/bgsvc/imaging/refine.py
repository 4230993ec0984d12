"""Optional mask refinements, done with rembg's own implementations."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Closed-form matting is a sparse solve over every pixel: cap its working size so one
# request cannot take minutes or gigabytes; the refined alpha is upscaled back.
MATTING_MAX_PIXELS = 1_000_000


def preload() -> None:
    """Import rembg's refinement code ahead of the first request: pymatting compiles its
    numba kernels on first import (up to a minute in a fresh install, ~1 s from the cache
    after that), which would otherwise land on a request and blow its timeout."""
    import rembg.bg  # noqa: F401


def post_process_mask(mask: np.ndarray) -> np.ndarray:
    """Smooth the mask's boundary as rembg's ``post_process_mask`` does (morphology + blur)."""
    from rembg.bg import post_process  # loaded by preload() at start-up

    return np.asarray(post_process(mask), dtype=np.uint8)


def alpha_matting(
    rgb: Image.Image,
    mask: np.ndarray,
    *,
    foreground_threshold: int,
    background_threshold: int,
    erode_size: int,
) -> np.ndarray:
    """Refine the mask with rembg's closed-form alpha matting; returns a new uint8 alpha."""
    from rembg.bg import alpha_matting_cutout  # loaded by preload() at start-up

    full = rgb.size
    work_rgb, work_mask = rgb, Image.fromarray(mask, "L")
    pixels = full[0] * full[1]
    if pixels > MATTING_MAX_PIXELS:
        scale = (MATTING_MAX_PIXELS / pixels) ** 0.5
        size = (max(1, int(full[0] * scale)), max(1, int(full[1] * scale)))
        work_rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        work_mask = work_mask.resize(size, Image.Resampling.BILINEAR)
    try:
        cutout = alpha_matting_cutout(
            work_rgb, work_mask, foreground_threshold, background_threshold, erode_size
        )
    except ValueError:
        # pymatting refuses trimaps without both known foreground and background.
        return mask
    alpha = cutout.getchannel("A")
    if alpha.size != full:
        alpha = alpha.resize(full, Image.Resampling.BILINEAR)
    return np.asarray(alpha, dtype=np.uint8)
