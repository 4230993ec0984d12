"""HEIF/HEIC (pi-heif) and AVIF (Pillow) inputs: decoded like the other formats, behind the
same guards. The HEIC files are fixtures (tests/fixtures/heif/make.py wrote them: nothing
the project installs encodes HEVC); AVIF is written here with Pillow."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgsvc.errors import InvalidImage, TooManyPixels, UnsupportedFormat
from bgsvc.imaging.decode import DecodeLimits, decode

HEIF = Path(__file__).parent.parent / "fixtures" / "heif"
LIMITS = DecodeLimits(
    allowed_formats=frozenset({"JPEG", "PNG", "HEIF", "AVIF"}),
    max_pixels=25_000_000,
    max_edge=2048,
)
RED, BLUE = (200, 30, 30), (30, 30, 200)


def fixture(name: str) -> bytes:
    return (HEIF / name).read_bytes()


def avif(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "AVIF", quality=90)
    return buf.getvalue()


def halves() -> Image.Image:
    rgb = np.zeros((80, 120, 3), dtype=np.uint8)
    rgb[:, :60], rgb[:, 60:] = RED, BLUE
    return Image.fromarray(rgb)


def with_size_box(data: bytes, width: int, height: int) -> bytes:
    """``data`` whose image size property (ISO BMFF ``ispe``) claims another size."""
    at = data.index(b"ispe")
    return data[: at + 8] + struct.pack(">II", width, height) + data[at + 16 :]


def near(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(pixel.astype(int) - colour).max() <= 12)


@pytest.mark.parametrize("name", ["photo.heic", "ten-bit.heic"])
def test_heic_decodes_to_8_bit_rgb_with_its_colours(name: str) -> None:
    image = decode(fixture(name), LIMITS)
    assert image.source_format == "HEIF" and image.rgb.mode == "RGB" and image.alpha is None
    assert image.size == (120, 80)
    pixels = np.asarray(image.rgb)
    assert near(pixels[40, 5], RED) and near(pixels[40, 115], BLUE)


def test_heic_orientation_is_applied_once() -> None:
    # Saved with EXIF orientation 6 (a phone held upright): shown rotated clockwise, so the
    # left (red) half is on top. Applying both the container's rotation and the EXIF tag
    # would turn it twice.
    image = decode(fixture("rotated.heic"), LIMITS)
    assert image.size == (80, 120) and image.source_size == (80, 120)
    pixels = np.asarray(image.rgb)
    assert near(pixels[5, 40], RED) and near(pixels[115, 40], BLUE)


def test_heic_alpha_is_kept_as_the_inputs_own_transparency() -> None:
    image = decode(fixture("alpha.heic"), LIMITS)
    assert image.alpha is not None
    alpha = np.asarray(image.alpha)
    assert alpha[:, :25].max() <= 8 and alpha[:, 40:].min() >= 247


def test_avif_decodes_to_rgb() -> None:
    image = decode(avif(halves()), LIMITS)
    assert image.source_format == "AVIF" and image.size == (120, 80)
    pixels = np.asarray(image.rgb)
    assert near(pixels[40, 5], RED) and near(pixels[40, 115], BLUE)


def test_heif_claiming_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(TooManyPixels):
        decode(with_size_box(fixture("photo.heic"), 60_000, 60_000), LIMITS)


def test_heif_whose_header_disagrees_with_its_data_is_invalid() -> None:
    with pytest.raises(InvalidImage):
        decode(with_size_box(fixture("photo.heic"), 1000, 1000), LIMITS)


@pytest.mark.parametrize("name", ["photo.heic", "alpha.heic"])
def test_truncated_heic_is_invalid(name: str) -> None:
    data = fixture(name)
    with pytest.raises(InvalidImage):
        decode(data[: len(data) // 2], LIMITS)


def test_truncated_or_absurd_avif_is_refused() -> None:
    data = avif(halves())
    # libavif parses the whole container when it opens: what it cannot read is not an
    # image it recognises (415), before any pixel is decoded.
    for bad in (data[: len(data) // 2], with_size_box(data, 60_000, 60_000)):
        with pytest.raises(UnsupportedFormat):
            decode(bad, LIMITS)


def test_a_lying_avif_within_the_budget_is_scaled_not_read_out_of_bounds() -> None:
    # libavif scales the decoded 120x80 picture to the size the header claims; what comes
    # back is the picture's colour, not memory past it.
    image = decode(with_size_box(avif(Image.new("RGB", (120, 80), RED)), 1000, 1000), LIMITS)
    assert image.size == (1000, 1000)
    pixels = np.asarray(image.rgb)
    assert near(pixels.min(axis=(0, 1)), RED) and near(pixels.max(axis=(0, 1)), RED)


def test_heif_and_avif_can_be_turned_off() -> None:
    only_jpeg = DecodeLimits(frozenset({"JPEG"}), 25_000_000, 2048)
    for data in (fixture("photo.heic"), avif(halves())):
        with pytest.raises(UnsupportedFormat):
            decode(data, only_jpeg)


def test_damaged_heif_and_avif_are_invalid_not_a_server_error() -> None:
    # libheif's security limit (a size box far below the real frame) and libavif's failed
    # frame decode (damaged data) both raise RuntimeError inside the plugins.
    shrunk = with_size_box(fixture("photo.heic"), 16, 16)
    data = bytearray(avif(halves()))
    at = data.index(b"mdat") + 4
    data[at : at + 16] = b"\xff" * 16
    for bad in (shrunk, bytes(data)):
        with pytest.raises(InvalidImage):
            decode(bad, LIMITS)


def test_avif_is_not_accepted_by_default() -> None:
    # libavif scales a frame to whatever size its header claims, so the header's pixel
    # count does not bound the decode: AVIF is an opt-in (BGSVC_ALLOWED_FORMATS).
    from bgsvc.config import Settings

    allowed = Settings().allowed_formats
    assert "AVIF" not in allowed and "HEIF" in allowed
