from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bgsvc.imaging.compose import cutout, render
from bgsvc.imaging.encode import EncodeSettings, encode
from bgsvc.options import RemovalOptions


def photo_and_mask(seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "RGB")
    mask = (rng.integers(0, 3, (40, 60)) * 127).astype(np.uint8)
    return rgb, mask


def test_cutout_zeroes_colour_only_where_fully_transparent() -> None:
    rgb, mask = photo_and_mask()
    out = np.asarray(cutout(rgb, mask))
    ref = np.dstack([np.asarray(rgb), mask])
    ref[mask == 0, :3] = 0
    np.testing.assert_array_equal(out, ref)
    assert cutout(rgb, mask).mode == "RGBA"


@pytest.mark.parametrize("fmt", ["png", "webp", "auto"])
def test_cutout_from_the_decoded_array_is_the_same_image_and_png(fmt: str) -> None:
    rgb, mask = photo_and_mask(3)
    options = RemovalOptions(format=fmt)
    from_array = render(rgb, mask, options, np.asarray(rgb))
    from_pillow = render(rgb, mask, options)
    assert from_array.pixels is not None and from_pillow.pixels is None
    np.testing.assert_array_equal(np.asarray(from_array.image), np.asarray(from_pillow.image))
    if fmt != "webp":
        settings = EncodeSettings()
        body = encode(from_array.image, "png", None, settings, from_array.pixels)
        decoded = np.asarray(Image.open(io.BytesIO(body)))
        np.testing.assert_array_equal(decoded, np.asarray(from_pillow.image))


def test_png_level_is_a_setting_and_trades_size_for_time() -> None:
    rgb, mask = photo_and_mask()
    img = cutout(rgb, mask)
    stored = encode(img, "png", None, EncodeSettings(png_encoder="zlib", png_compress_level=0))
    packed = encode(img, "png", None, EncodeSettings(png_encoder="zlib", png_compress_level=9))
    assert len(stored) > len(packed)
    for body in (stored, packed):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), np.asarray(img))


def test_webp_method_is_a_setting_and_every_method_decodes() -> None:
    rgb, mask = photo_and_mask()
    img = cutout(rgb, mask)
    for method in (0, 2, 6):
        body = encode(img, "webp", 90, EncodeSettings(webp_method=method))
        decoded = Image.open(io.BytesIO(body))
        assert decoded.format == "WEBP" and decoded.size == img.size


def test_png_rle_strategy_is_lossless_and_smaller_on_a_cutout() -> None:
    from benchmarks.levers import _cutout_image

    img = _cutout_image(0.3)
    rle = encode(img, "png", None, EncodeSettings(png_encoder="zlib", png_zlib_strategy="rle"))
    default = encode(
        img, "png", None, EncodeSettings(png_encoder="zlib", png_zlib_strategy="default")
    )
    assert len(rle) < len(default)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rle))), np.asarray(img))


def test_fpng_writes_lossless_png_for_colour_and_zlib_for_mattes() -> None:
    rgb, mask = photo_and_mask()
    for img in (cutout(rgb, mask), rgb, Image.fromarray(mask, "L")):
        fast = encode(img, "png", None, EncodeSettings(png_encoder="fpng"))
        slow = encode(img, "png", None, EncodeSettings(png_encoder="zlib"))
        with Image.open(io.BytesIO(fast)) as decoded:
            assert decoded.format == "PNG" and decoded.mode == img.mode
            np.testing.assert_array_equal(np.asarray(decoded), np.asarray(img))
        # Different writers give different bytes, except for the matte, which is zlib's.
        assert (fast == slow) == (img.mode == "L")


def visible_psnr_and_alpha_error(src: Image.Image, body: bytes) -> tuple[float, int]:
    """PSNR of the colour as seen (premultiplied) where the source is not transparent,
    and the largest alpha error."""
    ref = np.asarray(src, dtype=np.float64)
    with Image.open(io.BytesIO(body)) as decoded:
        out = np.asarray(decoded.convert("RGBA"), dtype=np.float64)
    seen = ref[..., 3] > 0
    mse = np.mean(
        (ref[..., :3] * ref[..., 3:] / 255 - out[..., :3] * out[..., 3:] / 255)[seen] ** 2
    )
    return float(10 * np.log10(255**2 / mse)), int(np.abs(ref[..., 3] - out[..., 3]).max())


def test_default_webp_keeps_alpha_within_one_level_and_colour_as_faithful_as_method_2() -> None:
    from benchmarks.levers import _cutout_image

    img = _cutout_image(0.3)
    psnr, alpha_error = visible_psnr_and_alpha_error(
        img, encode(img, "webp", None, EncodeSettings())
    )
    before, _ = visible_psnr_and_alpha_error(
        img, encode(img, "webp", None, EncodeSettings(webp_method=2))
    )
    assert alpha_error <= 1
    assert psnr >= before - 0.25 and psnr > 38


def test_webp_alpha_quality_100_keeps_alpha_exact_and_90_quantises_it_by_one_level() -> None:
    from benchmarks.levers import _cutout_image

    img = _cutout_image(0.3)
    errors = [
        visible_psnr_and_alpha_error(
            img, encode(img, "webp", None, EncodeSettings(webp_alpha_quality=q))
        )[1]
        for q in (100, 90)
    ]
    assert errors == [0, 1]


def test_png_and_jpg_bytes_match_the_reference_path() -> None:
    from tests.imaging.test_compose import reference_render, soft_scene

    rgb, mask = soft_scene()
    for options in (
        RemovalOptions(),
        RemovalOptions(format="jpg"),
        RemovalOptions(crop=True, bg_color=(9, 9, 9, 255)),
    ):
        got = render(rgb, mask, options)
        want = reference_render(rgb, mask, options)
        settings = EncodeSettings()
        assert encode(got.image, got.format, None, settings) == encode(
            want.image, want.format, None, settings
        )
