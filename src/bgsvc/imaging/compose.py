"""Turn pixels and a matte into the image the caller asked for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bgsvc.errors import NoForeground
from bgsvc.options import OutputFormat, RemovalOptions

# Model mattes carry faint noise far from the subject; without a floor the subject's box
# would grow to the whole frame. 16/255 keeps soft hair edges inside the box.
FOREGROUND_THRESHOLD = 16


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels."""

    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class Rendered:
    """The composed image, the concrete format to encode it in, and the subject's box in it."""

    image: Image.Image
    format: OutputFormat
    box: Box


def foreground_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the subject in ``mask`` (uint8 HxW), or None when there is none."""
    solid = mask > FOREGROUND_THRESHOLD
    rows = np.flatnonzero(solid.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(solid.any(axis=0))
    return Box(
        left=int(cols[0]),
        top=int(rows[0]),
        width=int(cols[-1] - cols[0] + 1),
        height=int(rows[-1] - rows[0] + 1),
    )


def combine_alpha(mask: np.ndarray, input_alpha: Image.Image | None) -> np.ndarray:
    """The model's matte limited by the input's own transparency, if any."""
    if input_alpha is None:
        return mask
    own = np.asarray(input_alpha, dtype=np.uint16)
    return ((mask.astype(np.uint16) * own + 127) // 255).astype(np.uint8)


# 0 -> 0, anything else -> 255: where the matte is fully transparent.
_VISIBLE_LUT = [0] + [255] * 255


def cutout(rgb: Image.Image, mask: np.ndarray) -> Image.Image:
    """RGBA with ``mask`` as alpha and RGB zeroed where alpha is 0.

    Hidden colour leaks the original background to anyone who drops the alpha, so it is
    cleared. Done with Pillow's C loops (a point LUT, composite, putalpha) rather than
    numpy boolean indexing, which costs several times more on 4 MP images.
    """
    alpha = Image.fromarray(mask, "L")
    visible = alpha.point(_VISIBLE_LUT)
    out = Image.composite(rgb, Image.new("RGB", rgb.size), visible)
    out.putalpha(alpha)
    return out


def render(rgb: Image.Image, mask: np.ndarray, options: RemovalOptions) -> Rendered:
    """Cut out, crop, fill the background and pick the concrete output format."""
    box = foreground_box(mask)
    width, height = rgb.size
    region = (0, 0, width, height)
    if options.crop:
        if box is None:
            raise NoForeground("No subject was found in the image, so there is nothing to crop to.")
        top, right, bottom, left = options.crop_margin.resolve(box.width, box.height)
        region = (
            box.left - left,
            box.top - top,
            box.left + box.width + right,
            box.top + box.height + bottom,
        )

    out = Image.fromarray(mask, "L") if options.channels == "alpha" else cutout(rgb, mask)
    if region != (0, 0, width, height):
        # Pillow pads outside the image with zeros: transparent, or black for a matte.
        out = out.crop(region)

    if options.channels == "rgba":
        fill = options.bg_color
        if fill is None and options.format == "jpg":
            fill = (255, 255, 255, 255)
        if fill is not None:
            out = Image.alpha_composite(Image.new("RGBA", out.size, fill), out)
            if fill[3] == 255:
                out = out.convert("RGB")
        if options.format == "jpg" and out.mode == "RGBA":
            white = Image.new("RGBA", out.size, (255, 255, 255, 255))
            out = Image.alpha_composite(white, out).convert("RGB")

    fmt = options.format
    if fmt == "auto":
        fmt = "png" if out.mode == "RGBA" else "jpg"
    if box is None:
        out_box = Box(0, 0, 0, 0)
    else:
        out_box = Box(box.left - region[0], box.top - region[1], box.width, box.height)
    return Rendered(image=out, format=fmt, box=out_box)
