"""Encode the final image; the formats and their content types live here."""

from __future__ import annotations

import io
import logging
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

try:  # fpng: a PNG writer an order of magnitude faster than zlib (benchmarks/RESULTS.md)
    import fpng as _fpng
except ImportError:  # pragma: no cover - platforms without a wheel fall back to zlib
    _fpng = None

CONTENT_TYPES = {
    "png": "image/png",
    "webp": "image/webp",
    "jpg": "image/jpeg",
    "gif": "image/gif",
    "zip": "application/zip",
}


# GIF's alpha is one bit: a pixel is shown where the matte is at least half opaque.
GIF_ALPHA_THRESHOLD = 128
GIF_TRANSPARENT = 255


def gif_frame(img: Image.Image) -> Image.Image:
    """``img`` in 255 colours plus a transparent index wherever its alpha is below half."""
    rgba = img.convert("RGBA")
    opaque = np.asarray(rgba.getchannel("A")) >= GIF_ALPHA_THRESHOLD
    # Fast octree: 1 ms for a 480x320 frame against median cut's 58 ms, which made the
    # palette most of a GIF frame's cost beside the model.
    paletted = rgba.convert("RGB").quantize(
        colors=255, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    )
    indices = np.asarray(paletted).copy()
    indices[~opaque] = GIF_TRANSPARENT
    out = Image.fromarray(indices, "P")
    palette = (paletted.getpalette() or [])[: 3 * 255]
    out.putpalette(palette + [0] * (3 * 256 - len(palette)))
    out.info["transparency"] = GIF_TRANSPARENT
    return out


@dataclass(frozen=True)
class EncodeSettings:
    """Defaults for each format; a request's ``quality`` overrides the lossy ones."""

    # "fpng": 7x faster than zlib level 1 on a 2 MP cutout for 16-37% larger files; "zlib"
    # (Pillow) for the smallest files. Greyscale mattes always go through zlib.
    png_encoder: str = "fpng"
    png_compress_level: int = 1
    # Run-length matching suits filtered photo rows and transparent runs: at level 1 it
    # is a little faster and 15-22% smaller than the default strategy (RESULTS.md).
    png_zlib_strategy: str = "rle"
    jpeg_quality: int = 90
    webp_quality: int = 90
    # libwebp effort. On 2 MP cutouts with real mattes, 0 takes 2.4-2.6x less time than 2
    # at equal or better PSNR/SSIM for 20-25% larger files: most of 2's time is the
    # lossless alpha plane, whose effort follows the method (RESULTS.md, "Lean CPU stages").
    webp_method: int = 0
    # 100 keeps the alpha plane lossless, the costliest part of the encode; 90 stays within
    # one level of the matte (mean 0.26 on a 2 MP cat) for 14-35% less time.
    webp_alpha_quality: int = 90


def encode(
    img: Image.Image,
    fmt: str,
    quality: int | None,
    settings: EncodeSettings,
    pixels: np.ndarray | None = None,
) -> bytes:
    """Encode ``img`` as ``fmt`` (png, webp, jpg or gif); JPEG inputs must already be opaque.
    ``pixels``, when given, are ``img``'s own as an HxWxC uint8 array."""
    buf = io.BytesIO()
    if fmt == "png":
        if settings.png_encoder == "fpng" and _fpng is not None and img.mode in ("RGB", "RGBA"):
            # From an array fpng reads the pixels in place; from Pillow it exports a copy.
            data: bytes = _fpng.from_ndarray(pixels) if pixels is not None else _fpng.from_pil(img)
            return data
        strategy = zlib.Z_RLE if settings.png_zlib_strategy == "rle" else zlib.Z_DEFAULT_STRATEGY
        img.save(buf, "PNG", compress_level=settings.png_compress_level, compress_type=strategy)
    elif fmt == "webp":
        img.save(
            buf,
            "WEBP",
            quality=quality or settings.webp_quality,
            alpha_quality=settings.webp_alpha_quality,
            method=settings.webp_method,
        )
    elif fmt == "jpg":
        if img.mode not in ("RGB", "L"):
            raise ValueError(f"JPEG needs an opaque image, got {img.mode}")
        img.save(buf, "JPEG", quality=quality or settings.jpeg_quality, optimize=False)
    elif fmt == "gif":
        gif_frame(img).save(buf, "GIF", transparency=GIF_TRANSPARENT)
    else:
        raise ValueError(f"unknown format {fmt}")
    return buf.getvalue()


def encode_zip(
    color: Image.Image, alpha: Image.Image, quality: int | None, settings: EncodeSettings
) -> bytes:
    """remove.bg's zip: ``color.jpg`` (the photo's colour) and ``alpha.png`` (the matte), the
    same size, for the client to compose; stored, as both are compressed already."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("color.jpg", encode(color, "jpg", quality, settings))
        archive.writestr("alpha.png", encode(alpha, "png", None, settings))
    return buf.getvalue()
