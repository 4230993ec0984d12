"""Turn pixels and a matte into the image the caller asked for."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from bgsvc.errors import NoForeground
from bgsvc.imaging.opencv import cv2
from bgsvc.options import OutputFormat, RemovalOptions

# Model mattes carry faint noise far from the subject; without a floor the subject's box
# would grow to the whole frame. 16/255 keeps soft hair edges inside the box.
FOREGROUND_THRESHOLD = 16


# Writes the colour of see-through pixels: (pixels, matte, out) -> out, where ``out`` is
# a view to write into, or None for a new array (or ``pixels`` itself, if nothing changed).
Recolour = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


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
    # The image's pixels when they were made as an array (the plain cutout): the PNG
    # writer reads them without another export from Pillow.
    pixels: np.ndarray | None = None
    # format "zip": the colour beside the matte (``image``).
    color: Image.Image | None = None


def foreground_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the subject in ``mask`` (uint8 HxW), or None when there is none."""
    # Row and column maxima of the uint8 matte: two small vectors instead of a
    # full-size boolean copy.
    rows = np.flatnonzero(mask.max(axis=1) > FOREGROUND_THRESHOLD)
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.max(axis=0) > FOREGROUND_THRESHOLD)
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
    # Rounded to nearest (ImageChops.multiply would truncate), in one pass with no 16-bit
    # temporaries (they were 150 MB at 25 MP). m * o / 255 is never halfway between two
    # integers (255 is odd), so OpenCV's rounding is (m * o + 127) // 255 exactly (tested
    # for every pair).
    own = np.asarray(input_alpha, dtype=np.uint8)
    return cv2.multiply(mask, own, scale=1 / 255)


# 0 -> 0, anything else -> 255 (a "1" image): where the matte is not fully transparent.
_VISIBLE_LUT = [0] + [255] * 255


def _cutout(rgb: Image.Image, alpha: Image.Image) -> Image.Image:
    # A paste through a "1" mask is a plain per-pixel copy into a zeroed image, where a
    # composite through an "L" mask blends every byte: half the time on 2 MP photos
    # (benchmarks/RESULTS.md, "Lean CPU stages").
    out = Image.new("RGB", rgb.size)
    out.paste(rgb, None, alpha.point(_VISIBLE_LUT, "1"))
    out.putalpha(alpha)
    return out


# Rows of the cutout made at a time: its masked colour never needs a full-size temporary
# (75 MB at 25 MP), and a band stays in cache between the mask and the interleave.
_BAND_ROWS = 64


def _cutout_pixels(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The cutout as an RGBA array straight from the decoded pixels: a masked copy and an
    interleave in OpenCV, band by band (1.7 ms for 2 MP, against 2.7 ms for Pillow's paste
    and putalpha, and no export of the result for the PNG writer)."""
    h, w = alpha.shape
    out = np.empty((h, w, 4), np.uint8)
    for top in range(0, h, _BAND_ROWS):
        rows = slice(top, top + _BAND_ROWS)
        band = pixels[rows]
        out[rows] = cv2.cvtColor(cv2.bitwise_and(band, band, mask=alpha[rows]), cv2.COLOR_RGB2RGBA)
        out[rows, :, 3] = alpha[rows]
    return out


def cutout(rgb: Image.Image, mask: np.ndarray) -> Image.Image:
    """RGBA with ``mask`` as alpha and RGB zeroed where alpha is 0.

    Hidden colour leaks the original background to anyone who drops the alpha, so it is
    cleared.
    """
    return _cutout(rgb, Image.fromarray(mask, "L"))


def _flatten(rgb: Image.Image, alpha: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """The cutout over an opaque colour, straight from the photo: one blend in Pillow's C
    loop, the same pixels as alpha-compositing the RGBA cutout (tested), at a fraction of
    the cost (no RGBA image, no second full-size pass)."""
    return Image.composite(rgb, Image.new("RGB", rgb.size, fill), alpha)


def render(
    rgb: Image.Image | None,
    mask: np.ndarray,
    options: RemovalOptions,
    pixels: np.ndarray | None = None,
    background: Image.Image | None = None,
    recolour: Recolour | None = None,
    max_pixels: int | None = None,
) -> Rendered:
    """Cut out, crop, fill the background and pick the concrete output format. ``pixels``
    (``rgb`` as a uint8 array, when the caller has it) makes the plain cutout cheaper, and
    stands for ``rgb`` when that is None (made only if a step needs it: 100 MB at 25 MP);
    ``background`` (RGB) is scaled to cover the output, centred, and put behind it.
    ``recolour`` (with ``pixels``): the colour to use where the matte is see-through (the
    edge step's decontamination); the plain cutout has it written straight into its RGBA
    array, every other output gets a recoloured copy of ``pixels``. ``max_pixels``: the
    result's pixel budget, which a crop its margins take past it is scaled down to fit."""
    box = foreground_box(mask)
    height, width = mask.shape
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

    fit = _fitted(region, max_pixels)
    plain_cutout = (
        options.bg_color is None
        and options.format not in ("jpg", "zip")
        and options.channels == "rgba"
        and background is None
    )
    if plain_cutout and pixels is not None and region == (0, 0, width, height):
        array = _cutout_pixels(pixels, mask)
        if recolour is not None:
            # Only see-through pixels change, and none of them is cleared by the cutout:
            # the same result as cutting out a recoloured copy, without the copy.
            recolour(pixels, mask, array[..., :3])
        fmt: OutputFormat = "png" if options.format == "auto" else options.format
        return Rendered(Image.fromarray(array), fmt, _box_in(box, region), pixels=array)
    if recolour is not None and pixels is not None:
        recoloured = recolour(pixels, mask, None)
        if recoloured is not pixels:
            # The photo's own image no longer stands for these pixels.
            rgb, pixels = None, recoloured
    if rgb is None:
        if pixels is None:
            raise ValueError("render needs the photo as an image or as pixels")
        rgb = Image.fromarray(pixels)
    alpha = Image.fromarray(mask, "L")
    if region != (0, 0, width, height):
        # Cropped before compositing, so only the output's pixels are composed. Pillow
        # pads outside the image with zeros: transparent, or black for a matte.
        alpha = alpha.crop(region)
        if options.channels == "rgba":
            rgb = rgb.crop(region)
    if options.format == "zip":
        return Rendered(
            image=_resized(alpha, fit),
            format="zip",
            box=_box_in(box, region, fit),
            color=_resized(rgb, fit),
        )

    out: Image.Image
    if options.channels == "alpha":
        out = alpha
    elif background is not None:
        # remove.bg's rule: centred and resized to fill the canvas, aspect ratio kept.
        cover = ImageOps.fit(background, rgb.size, Image.Resampling.LANCZOS)
        out = Image.composite(rgb, cover, alpha)
    else:
        fill = options.bg_color
        if fill is None and options.format == "jpg":
            fill = (255, 255, 255, 255)
        if fill is None:
            out = _cutout(rgb, alpha)
        elif fill[3] == 255:
            out = _flatten(rgb, alpha, (fill[0], fill[1], fill[2]))
        else:
            out = Image.alpha_composite(Image.new("RGBA", rgb.size, fill), _cutout(rgb, alpha))
            if options.format == "jpg":
                white = Image.new("RGBA", out.size, (255, 255, 255, 255))
                out = Image.alpha_composite(white, out).convert("RGB")

    fmt = options.format
    if fmt == "auto":
        fmt = "png" if out.mode == "RGBA" else "jpg"
    return Rendered(image=_resized(out, fit), format=fmt, box=_box_in(box, region, fit))


def _fitted(region: tuple[int, int, int, int], max_pixels: int | None) -> tuple[int, int] | None:
    """The size a crop's ``region`` is scaled down to where its margins take it past
    ``max_pixels`` (up to 500 px a side: a 0.25 MP preview came back 2.25 MP, a 25 MP
    result 36 MP); None where it fits. Scaled whole, the margins keep their meaning."""
    width, height = region[2] - region[0], region[3] - region[1]
    if max_pixels is None or width * height <= max_pixels:
        return None
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _resized(img: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    if size is None or img.size == size:
        return img
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _box_in(
    box: Box | None, region: tuple[int, int, int, int], fit: tuple[int, int] | None = None
) -> Box:
    """The subject's box in the output ``region`` of the photo (empty without a subject),
    as the region is scaled to ``fit`` when it is."""
    if box is None:
        return Box(0, 0, 0, 0)
    found = Box(box.left - region[0], box.top - region[1], box.width, box.height)
    if fit is None:
        return found
    sx, sy = fit[0] / (region[2] - region[0]), fit[1] / (region[3] - region[1])
    return Box(
        round(found.left * sx),
        round(found.top * sy),
        round(found.width * sx),
        round(found.height * sy),
    )
