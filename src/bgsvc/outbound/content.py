"""What a fetched body is, read from its bytes: a server's Content-Type is not trusted."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable

from PIL import Image, UnidentifiedImageError

from bgsvc.errors import InvalidImage, TooManyPixels, UnsupportedFormat
from bgsvc.imaging import formats as _formats  # noqa: F401  (registers HEIF and AVIF)
from bgsvc.imaging.decode import check_png_chunks


def sniff_image_format(data: bytes, allowed_formats: Iterable[str]) -> str:
    """The Pillow format name of ``data`` (only the header is read), if it is one of
    ``allowed_formats``; UnsupportedFormat otherwise, InvalidImage for an empty body."""
    formats = sorted({f.upper() for f in allowed_formats})
    if not data:
        raise InvalidImage("The URL returned an empty body.")
    check_png_chunks(data)  # Pillow reads a PNG's chunks up to its image data in Python
    try:
        with warnings.catch_warnings():
            # Only the format is wanted here; the decoder enforces the pixel limit later.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=formats) as img:
                found = img.format
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"The URL's image is too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UnsupportedFormat(
            f"The URL did not return an image in an accepted format ({', '.join(formats)})."
        ) from exc
    if found is None or found.upper() not in formats:
        raise UnsupportedFormat(f"The URL returned {found}, not one of {', '.join(formats)}.")
    return found.upper()
