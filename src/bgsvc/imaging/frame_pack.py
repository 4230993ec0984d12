"""A video segment's finished frames, kept between the segment's job and the stitch:
each frame's pixels deflated on their own (zlib level 1: a 720p cutout in about 20 ms,
several times smaller than raw), after a small header saying their size and layout.

Read back within the sizes the stitch expects, never more: a stored object is not
trusted to be what its header says.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator

MAGIC = b"BGSVCFR1"
_LENGTH = struct.Struct("!I")
CHANNELS = {"RGBA": 4, "RGB": 3, "L": 1}
MEDIA_TYPE = "application/octet-stream"


class BrokenPack(ValueError):
    """The stored frames are not what the stitch expects."""


def frame_bytes(size: tuple[int, int], mode: str) -> int:
    return size[0] * size[1] * CHANNELS[mode]


class FramePacker:
    """Frames in, one body out."""

    def __init__(self, size: tuple[int, int], mode: str) -> None:
        self.size = size
        self.mode = mode
        self._expected = frame_bytes(size, mode)
        self._chunks: list[bytes] = []

    @property
    def count(self) -> int:
        return len(self._chunks)

    def add(self, pixels: bytes) -> None:
        if len(pixels) != self._expected:
            raise ValueError(f"a frame of {len(pixels)} bytes, not {self._expected}")
        packed = zlib.compress(pixels, 1)
        self._chunks.append(_LENGTH.pack(len(packed)) + packed)

    def body(self) -> bytes:
        head = json.dumps({"size": list(self.size), "mode": self.mode, "frames": self.count})
        encoded = head.encode()
        return b"".join([MAGIC, _LENGTH.pack(len(encoded)), encoded, *self._chunks])


def frame_count(body: bytes, size: tuple[int, int], mode: str) -> int:
    """The frames ``body`` holds, once its header matches the size and layout expected."""
    return _head(body, size, mode)[0]


def _head(body: bytes, size: tuple[int, int], mode: str) -> tuple[int, int]:
    """The frame count and where the first frame starts."""
    if not body.startswith(MAGIC) or len(body) < len(MAGIC) + _LENGTH.size:
        raise BrokenPack("not a frame pack")
    (length,) = _LENGTH.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    if length > 4096 or start + length > len(body):
        raise BrokenPack("a frame pack with a broken header")
    try:
        head = json.loads(body[start : start + length])
        frames = head["frames"]
        ok = head["size"] == list(size) and head["mode"] == mode
    except (ValueError, KeyError, TypeError):
        raise BrokenPack("a frame pack with a broken header") from None
    if not ok or type(frames) is not int or frames < 0:
        raise BrokenPack("a frame pack of another size or layout")
    return frames, start + length


def frames(body: bytes, size: tuple[int, int], mode: str) -> Iterator[bytes]:
    """Each frame's pixels, exactly ``frame_bytes(size, mode)`` of them."""
    count, offset = _head(body, size, mode)
    expected = frame_bytes(size, mode)
    for _ in range(count):
        if offset + _LENGTH.size > len(body):
            raise BrokenPack("a frame pack cut short")
        (length,) = _LENGTH.unpack_from(body, offset)
        offset += _LENGTH.size
        if offset + length > len(body):
            raise BrokenPack("a frame pack cut short")
        inflate = zlib.decompressobj()
        try:
            pixels = inflate.decompress(body[offset : offset + length], expected)
        except zlib.error:
            raise BrokenPack("a frame pack with a broken frame") from None
        if len(pixels) != expected or inflate.unconsumed_tail or not inflate.eof:
            raise BrokenPack("a frame pack with a frame of another size")
        offset += length
        yield pixels
    if offset != len(body):
        raise BrokenPack("a frame pack with bytes after its frames")
