"""HEIF/HEIC (pi-heif) and AVIF (Pillow) inputs: decoded like the other formats, behind the
same guards (for AVIF, each AV1 frame's own size as well as the header's). The HEIC files
are fixtures (tests/fixtures/heif/make.py wrote them: nothing the project installs encodes
HEVC); AVIF is written here with Pillow."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgsvc.errors import InvalidImage, TooManyPixels, UnsupportedFormat
from bgsvc.imaging.avif import check as avif_check
from bgsvc.imaging.avif import coded_pixels
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


def test_avif_is_accepted_by_default() -> None:
    from bgsvc.config import Settings

    allowed = Settings().allowed_formats
    assert "AVIF" in allowed and "HEIF" in allowed


def avif_frame_larger_than_its_header(frame: tuple[int, int], header: tuple[int, int]) -> bytes:
    data = avif(Image.new("RGB", frame, RED))
    return with_size_box(data, *header)


@pytest.mark.parametrize(
    ("frame", "header"),
    [((8000, 6000), (80, 60)), ((120, 80), (119, 80)), ((120, 80), (120, 16))],
)
def test_an_avif_whose_frame_is_larger_than_its_header_is_refused_before_decoding(
    frame: tuple[int, int], header: tuple[int, int]
) -> None:
    # libavif would decode the whole frame and then scale it to the header's size: the
    # pixel guard would have been told the wrong cost.
    with pytest.raises(InvalidImage, match="AVIF picture is up to"):
        decode(avif_frame_larger_than_its_header(frame, header), LIMITS)


def sequence_headers(data: bytes) -> list[int]:
    """Where each AV1 sequence header OBU starts in ``data``'s mdat (whose items are runs of
    sized OBUs, one after another)."""
    at = data.index(b"mdat") + 4
    found = []
    while at < len(data):
        header = data[at]
        if (header >> 3) & 0xF == 1:
            found.append(at)
        at += 2 if header & 0x04 else 1
        size = shift = 0
        while True:
            byte = data[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        at += size
    return found


def as_padding(data: bytes, at: int) -> bytes:
    """``data`` with the OBU at ``at`` retyped as padding (type 15), its size kept."""
    return data[:at] + bytes([(15 << 3) | (data[at] & 0x07)]) + data[at + 1 :]


def test_an_avif_with_alpha_has_both_pictures_checked() -> None:
    data = avif(Image.new("RGBA", (120, 80), (*RED, 128)))
    image = decode(data, LIMITS)
    assert image.size == (120, 80) and image.alpha is not None
    colour, alpha = sequence_headers(data)
    for at in (colour, alpha):
        with pytest.raises(InvalidImage, match="no AV1 sequence header"):
            decode(as_padding(data, at), LIMITS)


def test_an_animated_avif_is_refused() -> None:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (64, 48), c) for c in (RED, BLUE)]
    frames[0].save(buf, "AVIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(UnsupportedFormat, match="Animated AVIF"):
        decode(buf.getvalue(), LIMITS)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("no sequence header", "no AV1 sequence header"),
        ("item outside the file", "structure could not be read"),
        ("box longer than the file", "structure could not be read"),
        ("too many extents", "too many extents"),
    ],
)
def test_an_avif_whose_structure_cannot_be_read_is_refused(damage: str, reason: str) -> None:
    data = bytearray(avif(halves()))
    iloc = data.index(b"iloc") + 4
    assert data[iloc] == 0 and data[iloc + 4 : iloc + 8] == bytes.fromhex("44000001")
    if damage == "no sequence header":
        data = bytearray(as_padding(bytes(data), sequence_headers(bytes(data))[0]))
    elif damage == "item outside the file":
        # iloc version 0, 4-byte offsets, no base offset: the extent's offset points past
        # the end of the file.
        data[iloc + 14 : iloc + 18] = struct.pack(">I", len(data) + 100)
    elif damage == "box longer than the file":
        data[data.index(b"meta") - 4 : data.index(b"meta")] = struct.pack(">I", len(data) * 2)
    elif damage == "too many extents":
        data[iloc + 12 : iloc + 14] = struct.pack(">H", 60_000)
    with pytest.raises(InvalidImage, match=reason):
        avif_check(bytes(data))
    # Through decode, libavif's own parser may refuse it first (415); either is a 4xx.
    with pytest.raises((InvalidImage, UnsupportedFormat)):
        decode(bytes(data), LIMITS)


def _box(kind: bytes, payload: bytes, version: int | None = None) -> bytes:
    if version is not None:
        payload = bytes([version, 0, 0, 0]) + payload
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def avif_with_hidden_headers(extra: int) -> bytes:
    """A 16x16 AVIF that libavif opens, with ``extra`` more AV1 items (each sized by the
    still's ``ispe``) that all point at one extent: the still's data behind 64 KB of
    empty padding OBUs."""
    src = avif(Image.new("RGB", (16, 16), RED))
    start = src.index(b"ipco") - 4
    ipco = src[start : start + struct.unpack(">I", src[start : start + 4])[0]]
    ispe = 1 + [kind for kind, _, _ in avif_boxes(ipco[8:])].index(b"ispe")
    ipma = src[src.index(b"ipma") + 8 :]
    # Pillow's one item: id 1, its properties as the encoder associated them.
    own = ipma[6 : 7 + ipma[6]]
    iloc = src.index(b"iloc") + 4
    offset, length = struct.unpack(">II", src[iloc + 14 : iloc + 22])
    coded = src[offset : offset + length]
    hidden = b"\x7a\x00" * 32_000 + coded  # OBU type 15 (padding), payload size 0
    at = src.index(b"hdlr") - 4
    hdlr = src[at : at + struct.unpack(">I", src[at : at + 4])[0]]
    ids = range(2, 2 + extra)
    infe = _box(b"infe", struct.pack(">HH", 1, 0) + b"av01\x00", 2) + b"".join(
        _box(b"infe", struct.pack(">HH", i, 1) + b"av01\x00", 2) for i in ids
    )
    entries = struct.pack(">H", 1) + own + b"".join(struct.pack(">HBB", i, 1, ispe) for i in ids)
    iprp = _box(b"iprp", ipco + _box(b"ipma", struct.pack(">I", 1 + extra) + entries, 0))
    rest = _box(b"iinf", struct.pack(">H", 1 + extra) + infe, 0) + iprp
    ftyp = src[: src.index(b"meta") - 4]

    def build(at: int) -> bytes:
        locs = struct.pack(">HHHII", 1, 0, 1, at, len(coded)) + b"".join(
            struct.pack(">HHHII", i, 0, 1, at + len(coded), len(hidden)) for i in ids
        )
        iloc_box = _box(b"iloc", struct.pack(">HH", 0x4400, 1 + extra) + locs, 0)
        pitm = _box(b"pitm", struct.pack(">H", 1), 0)
        return ftyp + _box(b"meta", hdlr + pitm + iloc_box + rest, 0)

    head = build(len(build(0)) + 8)
    return head + _box(b"mdat", coded + hidden)


def avif_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    at, found = 0, []
    while at < len(data):
        size = struct.unpack(">I", data[at : at + 4])[0]
        found.append((data[at + 4 : at + 8], at + 8, at + size))
        at += size
    return found


def test_avif_items_that_hide_their_sequence_headers_are_refused_in_bounded_time() -> None:
    # A hundred items over one extent of 32 000 empty OBUs: unbounded, the serving
    # process would step over 3.2 million OBUs (a thousand items: tens of CPU seconds
    # for a 100 KB upload) before libavif decodes a 16x16 still.
    data = avif_with_hidden_headers(100)
    assert Image.open(io.BytesIO(data)).size == (16, 16)  # libavif accepts the container
    started = time.process_time()
    with pytest.raises(InvalidImage, match="too many OBUs"):
        decode(data, LIMITS)
    assert time.process_time() - started < 1.0


def avif_grid(tile: tuple[int, int], output: tuple[int, int]) -> bytes:
    """An AVIF whose primary item is a 1x1 ``grid`` of ``output`` size over one AV1 tile
    of ``tile`` size (each item's ``ispe`` telling its own size truly)."""
    src = avif(Image.new("RGB", tile, RED))
    start = src.index(b"ipco") - 4
    ipco = src[start : start + struct.unpack(">I", src[start : start + 4])[0]]
    count = len(avif_boxes(ipco[8:]))
    ipco = _box(b"ipco", ipco[8:] + _box(b"ispe", struct.pack(">II", *output), 0))
    ipma = src[src.index(b"ipma") + 8 :]
    own = ipma[6 : 7 + ipma[6]]  # the tile's associations, as Pillow wrote them
    iloc = src.index(b"iloc") + 4
    offset, length = struct.unpack(">II", src[iloc + 14 : iloc + 22])
    coded = src[offset : offset + length]
    at = src.index(b"hdlr") - 4
    hdlr = src[at : at + struct.unpack(">I", src[at : at + 4])[0]]
    entries = struct.pack(">HBB", 1, 1, count + 1) + struct.pack(">H", 2) + own
    grid = bytes(4) + struct.pack(">HH", *output)  # version, flags, one row, one column
    infe = _box(b"infe", struct.pack(">HH", 1, 0) + b"grid\x00", 2)
    infe += _box(b"infe", struct.pack(">HH", 2, 1) + b"av01\x00", 2)
    rest = (
        _box(b"iinf", struct.pack(">H", 2) + infe, 0)
        + _box(b"iref", _box(b"dimg", struct.pack(">HHH", 1, 1, 2)), 0)
        + _box(b"iprp", ipco + _box(b"ipma", struct.pack(">I", 2) + entries, 0))
        + _box(b"idat", grid)
    )

    def build(at: int) -> bytes:
        # Version 1: the grid's data in idat (construction method 1), the tile's in mdat.
        locs = struct.pack(">HHHHII", 1, 1, 0, 1, 0, len(grid))
        locs += struct.pack(">HHHHII", 2, 0, 0, 1, at, len(coded))
        iloc_box = _box(b"iloc", struct.pack(">HH", 0x4400, 2) + locs, 1)
        pitm = _box(b"pitm", struct.pack(">H", 1), 0)
        return src[: src.index(b"meta") - 4] + _box(b"meta", hdlr + pitm + iloc_box + rest, 0)

    return build(len(build(0)) + 8) + _box(b"mdat", coded)


def test_an_avif_grid_whose_tile_is_larger_than_the_grid_is_refused_before_decoding() -> None:
    # Pillow (and the pixel guard) see the grid's 64x64; libavif decodes the tile whole,
    # and nothing in a 1x1 grid's layout bounds it: a 1 KB file cost a 3 MP decode here,
    # 48 MP with an 8000x6000 tile (up to libavif's own limit, 268 MP).
    assert Image.open(io.BytesIO(avif_grid((64, 64), (64, 64)))).size == (64, 64)
    assert decode(avif_grid((64, 64), (64, 64)), LIMITS).size == (64, 64)
    bomb = avif_grid((2048, 1536), (64, 64))
    assert Image.open(io.BytesIO(bomb)).size == (64, 64)
    with pytest.raises(InvalidImage, match="2048x1536 but the image it is part of is 64x64"):
        decode(bomb, LIMITS)


@pytest.mark.parametrize(
    ("name", "pixels"),
    [("bomb-alpha", 16_781_312), ("bomb-grid", 1_073_741_824), ("bomb-overlay", 1_073_741_824)],
)
def test_a_heif_whose_pictures_add_up_past_its_size_is_refused_before_decoding(
    name: str, pixels: int
) -> None:
    # Each a few KB, built by hand around one 4096x4096 HEVC frame (x265 through PyAV):
    # a 64x64 picture with a 4096x4096 alpha image, a 64x64 grid of 64 such tiles, an
    # overlay of 64 of them. Pillow, and the pixel guard, saw 64x64; libheif decoded
    # every picture whole (the grid and the overlay: 7.6 and 11.3 s of CPU a request).
    data = fixture(f"{name}.heic")
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    started = time.process_time()
    with pytest.raises(TooManyPixels, match=f"add up to {pixels} pixels"):
        decode(data, LIMITS)
    assert time.process_time() - started < 1.0


def test_a_heif_with_alpha_is_within_what_its_size_allows() -> None:
    # The picture and its alpha image of the same size: twice its pixels, no more.
    data = fixture("alpha.heic")
    assert coded_pixels(data) == 2 * 120 * 80
    assert decode(data, LIMITS).size == (120, 80)
