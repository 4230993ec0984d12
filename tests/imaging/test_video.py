"""Recognising a video by its first bytes, and the limits read from its headers."""

from __future__ import annotations

import pytest

from bgsvc.errors import InvalidParameter, InvalidVideo, VideoTooLarge
from bgsvc.imaging.video import (
    VideoInfo,
    VideoLimits,
    check_limits,
    is_video,
    output_size,
    video_format,
)
from bgsvc.options import RemovalOptions
from tests.conftest import encode_image, subject_image
from tests.videos import clip

LIMITS = VideoLimits(
    max_duration_s=60, max_frames=100, max_frame_pixels=10_000, max_total_pixels=200_000
)


# A header's fields as a child reports them: 10 frames of 64x48 at 25 fps.
INFO: dict[str, object] = {
    "width": 64,
    "height": 48,
    "frames": 10,
    "duration_s": 0.4,
    "rate_num": 25,
    "rate_den": 1,
    "rotation": 0,
    "codec": "h264",
}


def info(**changes: object) -> VideoInfo:
    values = {**INFO, **changes}
    return VideoInfo(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("container", ["mp4", "mov", "webm", "matroska"])
def test_videos_are_recognised_by_their_container_signature(container: str) -> None:
    assert is_video(clip(container))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_images_are_not_videos(fmt: str) -> None:
    assert not is_video(encode_image(subject_image(), fmt))


def test_heif_and_avif_brands_are_images_not_videos() -> None:
    for brand in (b"heic", b"mif1", b"avif"):
        assert not is_video(b"\x00\x00\x00\x18ftyp" + brand + b"\x00" * 32)
    # An image brand among the compatible ones (a MIAF profile as the major brand).
    assert not is_video(b"\x00\x00\x00\x18ftypMA1B\x00\x00\x00\x00mif1avif" + b"\x00" * 32)
    assert is_video(b"\x00\x00\x00\x18ftypqt  " + b"\x00" * 32)
    assert not is_video(b"")


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"duration_s": 61.0}, VideoTooLarge),
        ({"frames": 101}, VideoTooLarge),
        ({"width": 200, "height": 100}, VideoTooLarge),
        ({"frames": 80, "duration_s": 3.2}, VideoTooLarge),
        ({"rate_num": 1000}, InvalidVideo),
        ({"rate_num": 0}, InvalidVideo),
        ({"frames": 0}, InvalidVideo),
        ({"width": 0}, InvalidVideo),
    ],
)
def test_headers_beyond_a_limit_or_no_clips_are_refused(
    changes: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        check_limits(info(**changes), LIMITS)


def test_headers_within_the_limits_pass() -> None:
    check_limits(info(), LIMITS)


def test_a_decode_may_find_a_few_frames_more_than_the_header_counted() -> None:
    assert LIMITS.allowed_frames(10) == 12
    assert LIMITS.allowed_frames(99) == 100


def test_the_output_is_the_display_size_within_budget_with_even_sides() -> None:
    assert output_size((65, 49), None) == (64, 48)
    assert output_size((1920, 1080), 1280 * 720) == (1280, 720)
    assert info(rotation=90).display_size == (48, 64)


def test_a_video_comes_back_as_webm_unless_another_video_format_is_asked_for() -> None:
    assert video_format(RemovalOptions(format="png", format_given=False)) == "webm"
    assert video_format(RemovalOptions(format="mov")) == "mov"
    with pytest.raises(InvalidParameter):
        video_format(RemovalOptions(format="gif"))


def test_a_decode_well_short_of_the_streams_own_count_is_a_cut_file() -> None:
    counted = info(frames=30, frames_exact=True)
    assert LIMITS.too_few_frames(10, counted)
    assert not LIMITS.too_few_frames(26, counted)
    # A count estimated from the container's duration (perhaps the audio's) proves nothing.
    assert not LIMITS.too_few_frames(10, info(frames=30))
