"""Splitting animations into frames and joining them again, below the HTTP layer."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bgsvc.errors import InvalidImage, TooManyFrames
from bgsvc.imaging.animation import count_gif_frames, encode_frames, open_animation
from bgsvc.imaging.decode import DecodeLimits
from bgsvc.imaging.encode import EncodeSettings
from tests.conftest import encode_image
from tests.routes.test_animated import animation, gif_of_tiny_frames

LIMITS = DecodeLimits(
    allowed_formats=frozenset({"PNG", "WEBP", "GIF"}), max_pixels=25_000_000, max_edge=2048
)


def test_counting_gif_frames_stops_at_the_limit() -> None:
    data = gif_of_tiny_frames(100_000)
    assert count_gif_frames(data, 51) == 51
    assert count_gif_frames(gif_of_tiny_frames(7), 51) == 7


def test_counting_a_cut_gif_counts_what_it_holds() -> None:
    data = gif_of_tiny_frames(5)
    assert count_gif_frames(data[:-30], 100) == 4
    assert count_gif_frames(b"GIF89a", 100) == 0


def test_frame_budget_is_checked_before_any_frame_is_decoded() -> None:
    with pytest.raises(TooManyFrames, match="POST /jobs"):
        open_animation(gif_of_tiny_frames(100_000), LIMITS, 50)


def test_a_still_is_left_to_the_still_path() -> None:
    still = encode_image(Image.new("RGB", (8, 8)), "GIF")
    assert open_animation(still, LIMITS, 50) is None
    assert open_animation(encode_image(Image.new("RGB", (8, 8))), LIMITS, 50) is None


def test_gif_frames_are_the_full_picture_after_disposal() -> None:
    # A GIF whose second frame only draws a small patch: the frame handed on is the whole
    # canvas, the first frame's pixels kept around the patch.
    first = Image.new("RGB", (16, 16), (250, 0, 0))
    second = Image.new("RGB", (16, 16), (250, 0, 0))
    second.paste((0, 0, 250), (4, 4, 8, 8))
    data = encode_image(first, "GIF", save_all=True, append_images=[second], disposal=1)
    frames = open_animation(data, LIMITS, 50)
    assert frames is not None and len(frames.frames) == 2
    pixels = np.asarray(frames.frames[1].rgb)
    assert tuple(pixels[0, 0]) == (250, 0, 0) and tuple(pixels[5, 5]) == (0, 0, 250)


def test_durations_and_loop_are_read_from_the_frames() -> None:
    frames = open_animation(animation("GIF"), LIMITS, 50)
    assert frames is not None and frames.durations == [40, 80, 120] and frames.loop == 0


def test_a_transparent_gif_frame_keeps_its_transparency() -> None:
    left = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    left.paste((200, 10, 10, 255), (0, 0, 8, 16))
    right = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    right.paste((200, 10, 10, 255), (8, 0, 16, 16))
    data = encode_frames([left, right], [10, 10], 0, "gif", None, EncodeSettings())
    decoded = open_animation(data, LIMITS, 50)
    assert decoded is not None
    for frame, (shown, hidden) in zip(decoded.frames, ((2, 12), (12, 2)), strict=True):
        assert frame.alpha is not None
        alpha = np.asarray(frame.alpha)
        assert alpha[5, shown] == 255 and alpha[5, hidden] == 0


def test_a_gif_cut_mid_frame_is_an_invalid_image() -> None:
    data = animation("GIF")
    with pytest.raises(InvalidImage):
        open_animation(data[:-40], LIMITS, 50)


def test_gif_output_cuts_the_matte_at_half() -> None:
    rgba = Image.new("RGBA", (4, 1), (200, 200, 200, 0))
    for x, a in enumerate((0, 127, 128, 255)):
        rgba.putpixel((x, 0), (200, 200, 200, a))
    body = encode_frames([rgba, rgba], [10, 10], 0, "gif", None, EncodeSettings())
    alpha = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))[0, :, 3]
    assert alpha.tolist() == [0, 0, 255, 255]
