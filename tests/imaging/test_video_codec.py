"""The media child's codec work: where a segment's decode starts (at the key frame before
its first frame, found from the packets' timestamps, and from the video's start whenever
that cannot be trusted), and when its frames are encoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bgsvc.imaging import video_codec
from tests.videos import clip, decode

FIRST = 13


def _numbered(data: bytes, first: int = FIRST) -> tuple[int, list[tuple[int, Any]]]:
    """How many frames were dropped before ``first``, and the rest, numbered."""
    out = list(video_codec.numbered_frames(data, first, most=100))
    dropped = [n for n, _ in out if n < first]
    return len(dropped), [(n, frame) for n, frame in out if n >= first]


def _same_frames(data: bytes, kept: list[tuple[int, Any]], first: int = FIRST) -> None:
    whole, _ = decode(data)
    assert [n for n, _ in kept] == list(range(first, len(whole)))
    assert [f.pts for _, f in kept] == [f.pts for f in whole[first:]]
    for (_, frame), reference in zip(kept, whole[first:], strict=True):
        pixels, expected = (f.to_ndarray(format="rgb24") for f in (frame, reference))
        assert np.array_equal(pixels, expected)


@pytest.mark.parametrize("container", ["mp4", "webm", "mov", "matroska"])
def test_a_late_segment_decodes_from_the_key_frame_before_it_not_from_the_start(
    container: str,
) -> None:
    # Key frames every 4 (H.264, with B-frames) or 5 (VP9) frames: frame 13 decodes
    # from frame 12 or 10, and its frames are those a decode from the start gives.
    data = clip(container, frames=23, keyint=5)
    dropped, kept = _numbered(data)
    assert dropped <= 3
    _same_frames(data, kept)


def test_with_no_key_frame_but_the_first_a_segment_decodes_from_the_start() -> None:
    data = clip("mp4", frames=23)
    dropped, kept = _numbered(data)
    assert dropped == FIRST
    _same_frames(data, kept)


def test_a_seek_that_lands_past_the_segments_first_frame_decodes_again_from_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A file whose index disagrees with its packets (or a demuxer that rounds): the
    # seek lands on a later key frame, and the frames before it would be lost.
    data = clip("webm", frames=23, keyint=5)
    whole, _ = decode(data)
    late = (whole[15].pts, whole[FIRST].pts)
    monkeypatch.setattr(video_codec, "seek_point", lambda *args: late)
    dropped, kept = _numbered(data)
    assert dropped == FIRST
    _same_frames(data, kept)


def test_the_first_segment_and_headers_that_cannot_say_decode_from_the_start() -> None:
    data = clip("webm", frames=23, keyint=5)
    dropped, kept = _numbered(data, first=0)
    assert dropped == 0
    _same_frames(data, kept, first=0)
    # More frames than a decode may take: the count is not read to its end.
    opened = video_codec.open_input(data)
    try:
        assert video_codec.seek_point(opened, FIRST, most=10) is None
    finally:
        opened.close()


class _Counted:
    """A container that counts the packets muxed into it."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.packets = 0

    def mux(self, packet: Any) -> None:
        self.packets += 1
        self.out.mux(packet)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L"])
def test_a_webm_frame_is_encoded_as_it_comes_not_when_the_file_closes(mode: str) -> None:
    # Encoded beside the model's next frame: held back, a segment's frames would all be
    # encoded after its last forward pass, while the model waits.
    source = video_codec.open_input(clip("webm", frames=4))
    try:
        encoder = video_codec.Encoder("webm", mode, (64, 48), video_codec.stream_params(source))
        counted = _Counted(encoder._out)
        encoder._out = counted  # type: ignore[assignment]
        shape = {"RGBA": (48, 64, 4), "RGB": (48, 64, 3), "L": (48, 64)}[mode]
        for i in range(6):
            encoder.add(np.full(shape, 40 * i, np.uint8), None)
            assert counted.packets == i + 1
        assert encoder.close()
    finally:
        source.close()
