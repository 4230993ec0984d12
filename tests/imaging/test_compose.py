from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgsvc.errors import NoForeground
from bgsvc.imaging.compose import Box, Rendered, combine_alpha, foreground_box, render
from bgsvc.options import RemovalOptions, parse_margin


def scene() -> tuple[Image.Image, np.ndarray]:
    rgb = Image.new("RGB", (100, 80), (10, 200, 30))
    mask = np.zeros((80, 100), dtype=np.uint8)
    mask[20:40, 30:60] = 255  # subject: 30 wide, 20 tall at (30, 20)
    return rgb, mask


def test_foreground_box_ignores_faint_noise() -> None:
    _, mask = scene()
    mask[0, 0] = 5
    assert foreground_box(mask) == Box(30, 20, 30, 20)


def test_foreground_box_is_none_for_empty_mask() -> None:
    assert foreground_box(np.zeros((4, 4), dtype=np.uint8)) is None


def test_rgba_output_zeroes_colour_under_full_transparency() -> None:
    rgb, mask = scene()
    out = render(rgb, mask, RemovalOptions())
    arr = np.asarray(out.image)
    assert out.image.mode == "RGBA" and out.format == "png"
    assert tuple(arr[0, 0]) == (0, 0, 0, 0)
    assert tuple(arr[30, 40]) == (10, 200, 30, 255)


def test_crop_with_pixel_margin_pads_and_reports_box_in_output() -> None:
    rgb, mask = scene()
    out = render(rgb, mask, RemovalOptions(crop=True, crop_margin=parse_margin("5px")))
    assert out.image.size == (40, 30)
    assert out.box == Box(5, 5, 30, 20)


def test_crop_margin_can_extend_past_the_image_with_transparency() -> None:
    rgb, mask = scene()
    out = render(rgb, mask, RemovalOptions(crop=True, crop_margin=parse_margin("50%")))
    # 50% of a 30x20 subject: 15 px left/right, 10 px top/bottom.
    assert out.image.size == (60, 40)
    mask[:, :] = 0
    mask[0:10, 0:10] = 255
    edge = render(rgb, mask, RemovalOptions(crop=True, crop_margin=parse_margin("4px")))
    assert edge.image.size == (18, 18)
    assert np.asarray(edge.image)[0, 0, 3] == 0


def test_a_crop_past_its_pixel_budget_is_scaled_whole_with_its_margins() -> None:
    # 500 px a side around a 30 x 20 subject is 1,030 x 1,020; a budget of 2,400 pixels
    # scales the whole result, margins and subject alike, so the margins keep their
    # meaning at every size.
    rgb, mask = scene()
    options = RemovalOptions(crop=True, crop_margin=parse_margin("500px"))
    out = render(rgb, mask, options, max_pixels=2_400)
    w, h = out.image.size
    assert w * h <= 2_400 and abs(w / h - 1030 / 1020) < 0.05
    assert abs(out.box.left - w * 500 / 1030) <= 1 and abs(out.box.width - w * 30 / 1030) <= 1
    # Within the budget, it is as asked.
    assert render(rgb, mask, options, max_pixels=10**7).image.size == (1030, 1020)
    zipped = render(
        rgb,
        mask,
        RemovalOptions(crop=True, crop_margin=parse_margin("500px"), format="zip"),
        max_pixels=2_400,
    )
    assert zipped.image.size == (w, h) and zipped.color is not None and zipped.color.size == (w, h)


def test_crop_without_subject_is_an_error() -> None:
    rgb, _ = scene()
    with pytest.raises(NoForeground):
        render(rgb, np.zeros((80, 100), dtype=np.uint8), RemovalOptions(crop=True))


def test_opaque_background_colour_gives_rgb() -> None:
    rgb, mask = scene()
    out = render(rgb, mask, RemovalOptions(bg_color=(0, 0, 255, 255)))
    assert out.image.mode == "RGB"
    assert np.asarray(out.image)[0, 0].tolist() == [0, 0, 255]
    assert out.format == "png"


def test_translucent_background_colour_keeps_alpha() -> None:
    rgb, mask = scene()
    out = render(rgb, mask, RemovalOptions(bg_color=(0, 0, 255, 128)))
    assert out.image.mode == "RGBA"
    assert np.asarray(out.image)[0, 0, 3] == 128


def test_jpg_without_colour_is_composited_on_white() -> None:
    rgb, mask = scene()
    out = render(rgb, mask, RemovalOptions(format="jpg"))
    assert out.image.mode == "RGB" and out.format == "jpg"
    assert np.asarray(out.image)[0, 0].tolist() == [255, 255, 255]


def test_alpha_channel_returns_the_matte() -> None:
    rgb, mask = scene()
    out = render(rgb, mask, RemovalOptions(channels="alpha"))
    assert out.image.mode == "L"
    assert np.array_equal(np.asarray(out.image), mask)


def test_auto_format_is_png_with_transparency_and_jpg_without() -> None:
    rgb, mask = scene()
    assert render(rgb, mask, RemovalOptions(format="auto")).format == "png"
    opaque = RemovalOptions(format="auto", bg_color=(255, 255, 255, 255))
    assert render(rgb, mask, opaque).format == "jpg"


def test_input_alpha_limits_the_matte() -> None:
    mask = np.full((2, 2), 255, dtype=np.uint8)
    own = Image.fromarray(np.array([[0, 255], [128, 255]], dtype=np.uint8), "L")
    assert combine_alpha(mask, own).tolist() == [[0, 255], [128, 255]]


# -- the cheaper paths against the straightforward ones they replaced ----------------------


def reference_render(rgb: Image.Image, mask: np.ndarray, options: RemovalOptions) -> Rendered:
    """The previous render: numpy box, full-size RGBA cutout, crop, then alpha_composite
    onto the fill. Kept as the oracle the faster paths must match pixel for pixel."""
    solid = mask > 16
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    box = None
    if rows.size:
        box = Box(
            int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
        )
    region = (0, 0, *rgb.size)
    if options.crop:
        if box is None:
            raise NoForeground("none")
        top, right, bottom, left = options.crop_margin.resolve(box.width, box.height)
        region = (
            box.left - left,
            box.top - top,
            box.left + box.width + right,
            box.top + box.height + bottom,
        )
    if options.channels == "alpha":
        out = Image.fromarray(mask, "L")
    else:
        rgba = np.dstack([np.asarray(rgb), mask])
        rgba[mask == 0, :3] = 0
        out = Image.fromarray(rgba, "RGBA")
    out = out.crop(region)
    if options.channels == "rgba":
        fill = options.bg_color or ((255, 255, 255, 255) if options.format == "jpg" else None)
        if fill is not None:
            out = Image.alpha_composite(Image.new("RGBA", out.size, fill), out)
            if fill[3] == 255:
                out = out.convert("RGB")
        if options.format == "jpg" and out.mode == "RGBA":
            out = Image.alpha_composite(Image.new("RGBA", out.size, (255,) * 4), out).convert("RGB")
    fmt = options.format if options.format != "auto" else ("png" if out.mode == "RGBA" else "jpg")
    out_box = (
        Box(0, 0, 0, 0)
        if box is None
        else Box(box.left - region[0], box.top - region[1], box.width, box.height)
    )
    return Rendered(out, fmt, out_box)


def soft_scene(seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """Noise colours under a matte with every alpha value: a soft-edged disc, faint
    noise, and a large fully transparent area."""
    rng = np.random.default_rng(seed)
    h, w = 90, 140
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - 60, yy - 40)
    mask = np.clip((30 - d) * 12, 0, 255).astype(np.uint8)
    mask[80:, 100:] = rng.integers(0, 12, (10, 40))  # faint model noise, below the floor
    mask[0, :] = np.arange(w) % 256  # every value from 0 up somewhere
    return rgb, mask


RENDER_CASES = {
    "png": RemovalOptions(),
    "webp": RemovalOptions(format="webp"),
    "jpg": RemovalOptions(format="jpg"),
    "auto": RemovalOptions(format="auto"),
    "crop": RemovalOptions(crop=True),
    "crop past the edges": RemovalOptions(crop=True, crop_margin=parse_margin("60%")),
    "opaque colour": RemovalOptions(bg_color=(12, 34, 56, 255)),
    "opaque colour as jpg": RemovalOptions(format="jpg", bg_color=(200, 10, 90, 255)),
    "translucent colour": RemovalOptions(bg_color=(0, 0, 255, 100)),
    "translucent colour as jpg": RemovalOptions(format="jpg", bg_color=(0, 0, 255, 100)),
    "cropped jpg on white": RemovalOptions(
        format="jpg", crop=True, crop_margin=parse_margin("40px")
    ),
    "alpha": RemovalOptions(channels="alpha"),
    "alpha cropped": RemovalOptions(channels="alpha", crop=True, crop_margin=parse_margin("50%")),
}


@pytest.mark.parametrize("name", list(RENDER_CASES))
def test_render_gives_the_same_pixels_as_the_reference_path(name: str) -> None:
    options = RENDER_CASES[name]
    for seed in range(3):
        rgb, mask = soft_scene(seed)
        got, want = render(rgb, mask, options), reference_render(rgb, mask, options)
        assert (got.image.mode, got.image.size) == (want.image.mode, want.image.size)
        np.testing.assert_array_equal(np.asarray(got.image), np.asarray(want.image))
        assert (got.format, got.box) == (want.format, want.box)


def test_render_leaves_the_decoded_photo_untouched() -> None:
    rgb, mask = soft_scene()
    before = np.asarray(rgb).copy()
    for options in RENDER_CASES.values():
        render(rgb, mask, options)
    np.testing.assert_array_equal(np.asarray(rgb), before)


def test_foreground_box_matches_a_full_size_threshold() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = np.zeros((50, 70), dtype=np.uint8)
        top, left = rng.integers(0, 40), rng.integers(0, 60)
        mask[top : top + rng.integers(1, 10), left : left + rng.integers(1, 10)] = rng.integers(
            0, 256
        )
        mask += rng.integers(0, 17, mask.shape, dtype=np.uint8) * (mask == 0)
        assert foreground_box(mask) == reference_render(
            Image.new("RGB", (70, 50)), mask, RemovalOptions()
        ).box or (foreground_box(mask) is None and not (mask > 16).any())


def test_input_alpha_product_rounds_to_nearest_for_every_pair() -> None:
    a, b = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    got = combine_alpha(a, Image.fromarray(b, "L"))
    want = (a.astype(np.uint32) * b + 127) // 255
    np.testing.assert_array_equal(got, want)


def test_opaque_fill_equals_alpha_compositing_the_cutout_for_every_value() -> None:
    alpha, value = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    rgb = Image.fromarray(np.dstack([value, 255 - value, value // 2]), "RGB")
    for fill in ((0, 0, 0, 255), (255, 255, 255, 255), (1, 128, 254, 255)):
        got = render(rgb, alpha, RemovalOptions(bg_color=fill)).image
        want = reference_render(rgb, alpha, RemovalOptions(bg_color=fill)).image
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_cutout_is_made_band_by_band_with_the_same_pixels() -> None:
    # Taller than one band (64 rows), with a short last band.
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (150, 37, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (150, 37), dtype=np.uint8)
    mask[::3] = 0
    got = render(None, mask, RemovalOptions(), pixels)
    want = reference_render(Image.fromarray(pixels), mask, RemovalOptions())
    np.testing.assert_array_equal(np.asarray(got.image), np.asarray(want.image))


def _brighten(pixels: np.ndarray, mask: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    # A stand-in for the edge step's colour: only see-through pixels change.
    soft = (mask > 0) & (mask < 255)
    target = pixels.copy() if out is None else out
    target[soft] = 255 - pixels[soft]
    return target


@pytest.mark.parametrize(
    "options",
    [RemovalOptions(), RemovalOptions(format="webp"), RemovalOptions(bg_color=(0, 0, 255, 255))],
)
def test_recolour_in_the_cutout_equals_rendering_recoloured_pixels(
    options: RemovalOptions,
) -> None:
    rng = np.random.default_rng(6)
    pixels = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    mask[:30] = 0
    mask[60:] = 255
    got = render(None, mask, options, pixels, recolour=_brighten)
    want = render(None, mask, options, _brighten(pixels, mask, None))
    plain = render(None, mask, options, pixels)
    assert not np.array_equal(np.asarray(got.image), np.asarray(plain.image))
    np.testing.assert_array_equal(np.asarray(got.image), np.asarray(want.image))
