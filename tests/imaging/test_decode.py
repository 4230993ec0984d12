from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bgsvc.errors import InvalidImage, MissingImage, TooManyPixels, UnsupportedFormat
from bgsvc.imaging.decode import DecodeLimits, decode, target_size
from tests.conftest import encode_image, subject_image

LIMITS = DecodeLimits(
    allowed_formats=frozenset({"JPEG", "PNG", "WEBP", "GIF"}), max_pixels=50_000_000, max_edge=2048
)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decodes_png_to_rgb_without_alpha() -> None:
    out = decode(encode_image(subject_image((64, 48))), LIMITS)
    assert out.rgb.mode == "RGB"
    assert out.size == (64, 48)
    assert out.alpha is None
    assert out.source_format == "PNG"


def test_rejects_empty_body() -> None:
    with pytest.raises(MissingImage):
        decode(b"", LIMITS)


def test_rejects_unknown_bytes_as_unsupported_format() -> None:
    with pytest.raises(UnsupportedFormat):
        decode(b"this is not an image at all", LIMITS)


def test_rejects_format_outside_allow_list() -> None:
    with pytest.raises(UnsupportedFormat):
        decode(encode_image(subject_image(), "BMP"), LIMITS)
    with pytest.raises(UnsupportedFormat):
        decode(encode_image(subject_image(), "TIFF"), LIMITS)


def test_rejects_truncated_jpeg() -> None:
    data = encode_image(subject_image((200, 200)), "JPEG")
    with pytest.raises(InvalidImage):
        decode(data[: len(data) // 2], LIMITS)


def test_rejects_corrupt_png_data() -> None:
    data = bytearray(encode_image(subject_image((64, 64))))
    data[60:90] = b"\x00" * 30
    with pytest.raises(InvalidImage):
        decode(bytes(data), LIMITS)


def test_rejects_image_over_pixel_limit_from_header_alone() -> None:
    with pytest.raises(TooManyPixels):
        decode(png_header_only(8000, 8000), LIMITS)


def test_rejects_decompression_bomb_header() -> None:
    with pytest.raises(TooManyPixels):
        decode(png_header_only(30000, 30000), LIMITS)


def test_applies_exif_orientation() -> None:
    img = subject_image((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode(encode_image(img, "JPEG", exif=exif.tobytes()), LIMITS)
    assert out.size == (20, 40)
    assert out.source_size == (20, 40)


def test_result_keeps_the_source_size_and_only_the_working_copy_is_bounded_by_max_edge() -> None:
    limits = DecodeLimits(LIMITS.allowed_formats, LIMITS.max_pixels, max_edge=100)
    out = decode(encode_image(subject_image((300, 150))), limits)
    assert out.size == (300, 150)
    assert out.source_size == (300, 150)
    assert out.work_size == (100, 50)
    assert out.work_pixels.shape == (50, 100, 3)
    assert out.work_rgb.size == (100, 50)


def test_working_copy_of_a_small_photo_is_the_photo_itself() -> None:
    out = decode(encode_image(subject_image((80, 60))), LIMITS)
    assert out.work_pixels is out.pixels
    assert out.work_rgb is out.rgb


def test_jpeg_draft_keeps_exact_output_budget_size() -> None:
    limits = DecodeLimits(LIMITS.allowed_formats, LIMITS.max_pixels, 2048, 1000 * 600 // 16)
    out = decode(encode_image(subject_image((1000, 600)), "JPEG"), limits)
    assert out.size == (250, 150)
    assert out.source_size == (1000, 600)


def test_output_pixel_budget_downscales_and_never_exceeds_it() -> None:
    assert target_size((2000, 1000), DecodeLimits(frozenset(), 10**9, 4096, 500_000)) == (1000, 500)
    w, h = target_size((4032, 3024), DecodeLimits(frozenset(), 10**9, 2048, 250_000))
    assert w * h <= 250_000 and (w, h) == (577, 433)


def test_without_an_output_budget_the_source_size_is_kept() -> None:
    assert target_size((9000, 5000), DecodeLimits(frozenset(), 10**9, 2048)) == (9000, 5000)


def test_keeps_input_alpha_and_hides_transparent_colour_from_model() -> None:
    img = subject_image((32, 32), "RGBA")
    arr = np.asarray(img).copy()
    arr[:, :16, 3] = 0
    arr[:, :16, :3] = (255, 0, 0)
    out = decode(encode_image(Image.fromarray(arr, "RGBA")), LIMITS)
    assert out.alpha is not None
    assert np.asarray(out.alpha)[:, :16].max() == 0
    # Transparent red is shown to the model as white, not red.
    assert tuple(np.asarray(out.rgb)[0, 0]) == (255, 255, 255)


def test_palette_with_transparency_becomes_alpha() -> None:
    img = subject_image((32, 32)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    data = encode_image(img, "PNG", transparency=0)
    out = decode(data, LIMITS)
    assert out.rgb.mode == "RGB"
    assert out.alpha is not None


def test_greyscale_with_alpha_is_handled() -> None:
    out = decode(encode_image(subject_image((32, 32), "LA")), LIMITS)
    assert out.rgb.mode == "RGB"


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    arr = np.full((16, 16), 40000, dtype=np.uint16)
    out = decode(encode_image(Image.fromarray(arr)), LIMITS)
    value = np.asarray(out.rgb)[0, 0, 0]
    assert 150 <= value <= 160  # 40000 / 257 = 155.6; clipping would give 255


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = decode(encode_image(cmyk, "JPEG", quality=95), LIMITS)
    r, g, b = np.asarray(out.rgb)[8, 8]
    assert out.rgb.mode == "RGB"
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_uses_first_frame() -> None:
    first = Image.new("RGB", (16, 16), (250, 250, 250))
    second = Image.new("RGB", (16, 16), (0, 0, 0))
    buf = encode_image(first, "GIF", save_all=True, append_images=[second])
    out = decode(buf, LIMITS)
    assert np.asarray(out.rgb).mean() > 200


def test_webp_input_is_accepted() -> None:
    out = decode(encode_image(subject_image((40, 30)), "WEBP"), LIMITS)
    assert out.size == (40, 30)
    assert out.source_format == "WEBP"


def swapped_rgb_profile(description: bytes = b"swapped") -> bytes:
    """A matrix/TRC ICC v2 profile whose red and blue primaries are sRGB's blue and red."""

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", 0x0233) + b"\0\0"
    text = description + b"\0"
    desc = (
        b"desc"
        + b"\0" * 4
        + struct.pack(">I", len(text))
        + text
        + b"\0" * 8
        + b"\0\0"
        + b"\0"
        + b"\0" * 67
    )
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.1431, 0.0606, 0.7141)),  # sRGB's blue
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.4361, 0.2225, 0.0139)),  # sRGB's red
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0" * 4
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def test_icc_tagged_image_is_converted_to_srgb() -> None:
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    out = decode(encode_image(red, "PNG", icc_profile=swapped_rgb_profile()), LIMITS)
    r, _, b = np.asarray(out.rgb)[4, 4].tolist()
    # "Red" in this profile is sRGB's blue: the pixels must have been converted.
    assert b > 200 and r < 60


def test_srgb_tagged_image_skips_the_colour_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageCms

    def no_transform(*args: object, **kwargs: object) -> None:
        raise AssertionError("sRGB to sRGB should not be transformed")

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    monkeypatch.setattr(ImageCms, "profileToProfile", no_transform)
    tagged = decode(encode_image(img, "PNG", icc_profile=srgb), LIMITS)
    np.testing.assert_array_equal(np.asarray(tagged.rgb), np.asarray(img))


def test_profile_named_srgb_with_other_primaries_is_still_converted() -> None:
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    icc = swapped_rgb_profile(b"sRGB IEC61966-2.1")
    r, _, b = np.asarray(decode(encode_image(red, "PNG", icc_profile=icc), LIMITS).rgb)[4, 4]
    assert b > 200 and r < 60


def test_translucent_upload_is_its_colour_over_white_exactly() -> None:
    # The paste through the alpha must give what compositing an RGB copy over white gave.
    rng = np.random.default_rng(7)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    want = Image.composite(rgba.convert("RGB"), white, rgba.getchannel("A"))
    out = decode(encode_image(rgba), LIMITS)
    np.testing.assert_array_equal(out.pixels, np.asarray(want))
    np.testing.assert_array_equal(np.asarray(out.rgb), np.asarray(want))


def test_large_images_export_band_by_band_to_the_same_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bgsvc.imaging import decode as decode_module

    # Bands of 3 rows over 100 rows (the last one short), as a 25 MP photo gets them.
    monkeypatch.setattr(decode_module, "_WHOLE_BYTES", 0)
    monkeypatch.setattr(decode_module, "_BAND_BYTES", 3 * 70 * 3)
    rgb = Image.fromarray(
        np.random.default_rng(8).integers(0, 256, (100, 70, 3), dtype=np.uint8), "RGB"
    )
    out = decode_module.as_array(rgb)
    assert out.shape == (100, 70, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(rgb))


def test_decoded_image_keeps_one_copy_of_the_pixels() -> None:
    out = decode(encode_image(subject_image((40, 30)), "PNG"), LIMITS)
    assert out.pixels.shape == (30, 40, 3)
    assert "rgb" not in out.__dict__  # no Pillow image until a step asks for one
    np.testing.assert_array_equal(np.asarray(out.rgb), out.pixels)


def _progressive_jpeg(extra_scans: int) -> bytes:
    """A progressive JPEG with ``extra_scans`` empty scans (10 bytes each) before its end:
    libjpeg runs every scan over every block of the picture."""
    data = encode_image(subject_image((64, 48)), "JPEG", progressive=True)
    empty = b"\xff\xda\x00\x08\x01\x01\x00\x01\x3f\x00"
    return data[:-2] + empty * extra_scans + data[-2:]


def test_a_jpeg_of_more_scans_than_are_decoded_is_refused_before_decoding() -> None:
    from bgsvc.imaging.decode import MAX_JPEG_SCANS

    # A 25 MP one of 10,000 empty scans, 397 KB, took 16.5 s of CPU to decode.
    assert decode(_progressive_jpeg(10), LIMITS).size == (64, 48)
    with pytest.raises(InvalidImage, match="scans"):
        decode(_progressive_jpeg(MAX_JPEG_SCANS), LIMITS)


def test_a_thumbnail_before_a_jpegs_picture_does_not_hide_its_scans() -> None:
    # The scans are counted by walking the segments by their lengths: an EXIF thumbnail
    # (a whole JPEG, with its own end-of-image marker) is not where counting stops.
    from bgsvc.imaging.decode import MAX_JPEG_SCANS

    thumbnail = b"Exif\0\0" + encode_image(subject_image((8, 8)), "JPEG")
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    data = _progressive_jpeg(MAX_JPEG_SCANS)
    with pytest.raises(InvalidImage, match="scans"):
        decode(data[:2] + app1 + data[2:], LIMITS)


def test_what_follows_a_jpegs_picture_is_not_counted_as_its_scans() -> None:
    # A motion photo carries its video after the picture: bytes that may hold the scan
    # marker by chance (about once in 64 KB of it), none of them decoded.
    from bgsvc.imaging.decode import MAX_JPEG_SCANS

    tail = b"\x00\xff\xda\x01" * (MAX_JPEG_SCANS + 1)
    assert decode(_progressive_jpeg(0) + tail, LIMITS).size == (64, 48)


def test_an_mpo_is_decoded_at_the_reduced_size_as_a_jpeg_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import JpegImagePlugin

    drafts: list[tuple[int, int]] = []
    real = JpegImagePlugin.JpegImageFile.draft

    def draft(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> object:
        drafts.append(size or (0, 0))
        return real(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    buf = io.BytesIO()
    photo = subject_image((1000, 600))
    photo.save(buf, "MPO", save_all=True, append_images=[photo.resize((64, 40))], quality=90)
    limits = DecodeLimits(
        LIMITS.allowed_formats | {"MPO"}, LIMITS.max_pixels, 2048, 1000 * 600 // 16
    )
    out = decode(buf.getvalue(), limits)
    assert out.source_format == "MPO"
    assert drafts == [(250, 150)] and out.size == (250, 150)


def _png_with(extra: bytes) -> bytes:
    """An 8 x 8 PNG with ``extra`` chunks after its header chunk."""
    data = encode_image(subject_image((8, 8)))
    ihdr_end = 8 + 12 + 13
    return data[:ihdr_end] + extra + data[ihdr_end:]


def _chunk(kind: bytes, body: bytes = b"") -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


@pytest.mark.parametrize(
    "extra",
    [
        _chunk(b"iCCP", b"a\0\0" + zlib.compress(bytes(1 << 20))) * 2,  # 1 MB inflated each
        _chunk(b"prVt") * 1_100,  # Pillow reads each one in Python
    ],
    ids=["profiles", "chunks"],
)
def test_a_png_of_more_chunks_than_an_image_needs_is_refused_unread(extra: bytes) -> None:
    # 24 MB of iCCP chunks took 100 s of CPU inside Image.open, before the header's size
    # was checked; 2 million empty chunks, 10 s.
    with pytest.raises(InvalidImage, match="chunks"):
        decode(_png_with(extra), LIMITS)


def test_a_png_with_its_profile_and_a_few_text_chunks_decodes() -> None:
    extra = _chunk(b"iCCP", b"a\0\0" + zlib.compress(b"x")) + _chunk(b"tEXt", b"k\0v") * 50
    assert decode(_png_with(extra), LIMITS).size == (8, 8)
