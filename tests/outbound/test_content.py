from __future__ import annotations

import io

import pytest
from PIL import Image

from bgsvc.errors import InvalidImage, UnsupportedFormat
from bgsvc.outbound.content import sniff_image_format
from tests.outbound.conftest import png_bytes


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, fmt)
    return buf.getvalue()


def test_the_format_is_read_from_the_bytes() -> None:
    assert sniff_image_format(png_bytes(), ["png", "jpeg"]) == "PNG"
    assert sniff_image_format(_encoded("JPEG"), ["PNG", "JPEG"]) == "JPEG"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"<html>not an image</html>", UnsupportedFormat),
        (_encoded("GIF"), UnsupportedFormat),
        (b"", InvalidImage),
    ],
)
def test_what_is_not_an_accepted_image_is_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        sniff_image_format(data, ["PNG", "JPEG"])
