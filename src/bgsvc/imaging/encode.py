"""Encode the final image; the formats and their content types live here."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}


@dataclass(frozen=True)
class EncodeSettings:
    """Defaults for each format; a request's ``quality`` overrides the lossy ones."""

    png_compress_level: int = 1
    jpeg_quality: int = 90
    webp_quality: int = 90


def encode(img: Image.Image, fmt: str, quality: int | None, settings: EncodeSettings) -> bytes:
    """Encode ``img`` as ``fmt`` (png, webp or jpg); JPEG inputs must already be opaque."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=settings.png_compress_level)
    elif fmt == "webp":
        img.save(
            buf,
            "WEBP",
            quality=quality or settings.webp_quality,
            alpha_quality=100,
            method=4,
        )
    elif fmt == "jpg":
        if img.mode not in ("RGB", "L"):
            raise ValueError(f"JPEG needs an opaque image, got {img.mode}")
        img.save(buf, "JPEG", quality=quality or settings.jpeg_quality, optimize=False)
    else:
        raise ValueError(f"unknown format {fmt}")
    return buf.getvalue()
