from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgsvc.errors import NoForeground
from bgsvc.imaging.compose import Box, combine_alpha, foreground_box, render
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
