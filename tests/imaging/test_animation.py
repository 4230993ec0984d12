"""Splitting animations into frames and joining them again, below the HTTP layer."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bgsvc.errors import InvalidImage, TooManyFrames
from bgsvc.imaging.animation import encode_frames, open_animation, walk_gif
from bgsvc.imaging.decode import DecodeLimits
from bgsvc.imaging.encode import EncodeSettings
from tests.conftest import encode_image
from tests.routes.test_animated import animation, gif_of_tiny_frames

LIMITS = DecodeLimits(
    allowed_formats=frozenset({"PNG", "WEBP", "GIF"}), max_pixels=25_000_000, max_edge=2048
)


def test_counting_gif_frames_stops_at_the_limit() -> None:
    data = gif_of_tiny_frames(100_000)
    assert walk_gif(data, 51).frames == 51
    assert walk_gif(gif_of_tiny_frames(7), 51).frames == 7


def test_counting_a_cut_gif_counts_what_it_holds() -> None:
    data = gif_of_tiny_frames(5)
    assert walk_gif(data[:-30], 100).frames == 4
    assert walk_gif(b"GIF89a", 100).frames == 0


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


def _gif_block(size: tuple[int, int], colour: int) -> tuple[bytes, bytes]:
    """A one-frame GIF of ``size``: its header up to the first block, and its image block
    (descriptor, LZW data), to splice into another GIF."""
    buf = io.BytesIO()
    Image.new("P", size, colour).save(buf, "GIF", palette=bytes(range(256)) * 3)
    data = buf.getvalue()
    start = 13 + (3 << ((data[10] & 7) + 1)) if data[10] & 0x80 else 13
    pos = start
    while data[pos] != 0x2C:  # past the extensions Pillow writes
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    return data[:start], data[pos:-1]


def gif_of_two_frames(
    first: tuple[int, int], second: tuple[int, int], at: tuple[int, int] = (0, 0)
) -> bytes:
    """A GIF of a ``first``-sized frame, then a ``second``-sized one placed ``at``."""
    head, one = _gif_block(first, 1)
    _, two = _gif_block(second, 2)
    two = two[:1] + at[0].to_bytes(2, "little") + at[1].to_bytes(2, "little") + two[5:]
    control = b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # 100 ms, no disposal
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    return head + loop + control + one + control + two + b"\x3b"


def test_a_gif_frame_reaching_far_past_its_picture_is_refused_before_any_is_decoded() -> None:
    # Two frames of 100 x 100 were checked; Pillow grows the picture to the second frame's
    # at its seek (13,000 x 13,000 took 2 GB and 9 s of CPU). The walk sees the picture the
    # frames need, and the budget holds it.
    data = gif_of_two_frames((100, 100), (6_000, 6_000))
    with pytest.raises(TooManyFrames):
        open_animation(data, LIMITS, max_frames=10)


def test_a_gif_frame_overrunning_its_picture_a_little_is_clipped_as_decoders_show_it() -> None:
    # 20 x 20 at (90, 90) of a 100 x 100 picture: browsers show its top-left 10 x 10.
    data = gif_of_two_frames((100, 100), (20, 20), at=(90, 90))
    decoded = open_animation(data, LIMITS, max_frames=10)
    assert decoded is not None and [f.size for f in decoded.frames] == [(100, 100)] * 2
    # Clipped, not shrunk: the first frame's colour up to (89, 89), the second's from 90.
    first, second = decoded.frames[0].pixels, decoded.frames[1].pixels
    assert (second[89, 89] == first[89, 89]).all() and (second[92, 92] != first[92, 92]).any()


def test_a_gif_whose_first_frame_sets_its_picture_size_is_counted_as_it_is() -> None:
    # Some encoders write a logical screen of 0 x 0: the first frame's extent is the
    # picture (as Pillow opens it), and frames within it are no reason to refuse.
    data = bytearray(gif_of_two_frames((60, 40), (60, 40)))
    data[6:10] = bytes(4)
    assert walk_gif(bytes(data), 10).frames == 2
    decoded = open_animation(bytes(data), LIMITS, max_frames=10)
    assert decoded is not None and [f.size for f in decoded.frames] == [(60, 40)] * 2


def test_decoding_frames_stops_at_a_frame_that_changes_the_picture_size() -> None:
    # Past the count's check (a probe made by hand): the decode refuses at the seek,
    # before the enlarged frame's pixels are decoded.
    from bgsvc.imaging.animation import Probe, decode_frames

    img = Image.open(io.BytesIO(gif_of_two_frames((100, 100), (3000, 3000))))
    with pytest.raises(InvalidImage, match="changes its size"):
        decode_frames(Probe(img, 2, "gif"), LIMITS)


@pytest.mark.parametrize("fmt", ["gif", "webp", "png"])
def test_an_apngs_loop_count_and_delays_are_cut_to_what_the_output_holds(fmt: str) -> None:
    # An APNG may say 100,000 loops and 65,535 s a frame; as a GIF or WebP that was a 500.
    frames = [Image.new("RGBA", (8, 8), colour) for colour in ("red", "blue")]
    out = encode_frames(frames, [65_535_000, 100], 100_000, fmt, None, EncodeSettings())
    decoded = Image.open(io.BytesIO(out))
    assert decoded.n_frames == 2
    assert decoded.info["loop"] == (100_000 if fmt == "png" else 65_535)
