"""remove.bg's ``scale`` and ``position``: the subject resized relative to the canvas and
moved on it, before the background is filled."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bgsvc.imaging.compose import foreground_box
from bgsvc.options import Placement


def place(
    rgb: Image.Image, mask: np.ndarray, placement: Placement
) -> tuple[Image.Image, np.ndarray]:
    """``rgb`` and its matte with the subject scaled and positioned on a canvas of the same
    size; outside the subject the colour is black and the matte 0. No subject: unchanged."""
    box = foreground_box(mask)
    if box is None:
        return rgb, mask
    width, height = rgb.size
    factor = 1.0
    if placement.scale is not None:
        # The subject's box fills ``scale`` of the canvas along its tighter side.
        factor = placement.scale * min(width / box.width, height / box.height)
    new_w = max(1, round(box.width * factor))
    new_h = max(1, round(box.height * factor))
    if placement.x is None or placement.y is None:
        # "original": the subject keeps its centre.
        left = round(box.left + box.width / 2 - new_w / 2)
        top = round(box.top + box.height / 2 - new_h / 2)
    else:
        left = round((width - new_w) * placement.x)
        top = round((height - new_h) * placement.y)
    if factor == 1.0 and (left, top) == (box.left, box.top):
        return rgb, mask
    region = (box.left, box.top, box.left + box.width, box.top + box.height)
    subject_rgb = rgb.crop(region)
    subject_alpha = Image.fromarray(mask).crop(region)
    if (new_w, new_h) != (box.width, box.height):
        subject_rgb = subject_rgb.resize((new_w, new_h), Image.Resampling.LANCZOS)
        subject_alpha = subject_alpha.resize((new_w, new_h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(subject_rgb, (left, top))
    matte = Image.new("L", (width, height))
    matte.paste(subject_alpha, (left, top))
    return canvas, np.asarray(matte, dtype=np.uint8)
