"""CachedResult to bytes and back, for a networked cache level."""

from __future__ import annotations

import json
import struct

from bgsvc.cache.base import CachedResult
from bgsvc.imaging.compose import Box

# A new layout gets a new magic: a node running older code then reads a miss, not garbage.
_MAGIC = b"BGR1"
_HEADER = struct.Struct(">4sI")


class CorruptEntry(ValueError):
    """Bytes that are not an entry this code wrote."""


def dumps(entry: CachedResult) -> bytes:
    """Every field the response needs (its headers too), then the body as is."""
    meta = json.dumps(
        {
            "media_type": entry.media_type,
            "format": entry.format,
            "width": entry.width,
            "height": entry.height,
            "box": [entry.box.left, entry.box.top, entry.box.width, entry.box.height],
            "model": entry.model,
            "source_size": list(entry.source_size),
        },
        separators=(",", ":"),
    ).encode()
    return _HEADER.pack(_MAGIC, len(meta)) + meta + entry.body


def loads(data: bytes) -> CachedResult:
    """The entry :func:`dumps` wrote; :class:`CorruptEntry` for anything else."""
    try:
        magic, size = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise CorruptEntry("unknown entry layout")
        start = _HEADER.size
        meta = json.loads(data[start : start + size])
        left, top, width, height = (int(v) for v in meta["box"])
        src_w, src_h = (int(v) for v in meta["source_size"])
        return CachedResult(
            body=bytes(data[start + size :]),
            media_type=str(meta["media_type"]),
            format=str(meta["format"]),
            width=int(meta["width"]),
            height=int(meta["height"]),
            box=Box(left, top, width, height),
            model=str(meta["model"]),
            source_size=(src_w, src_h),
        )
    except CorruptEntry:
        raise
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(str(exc)) from exc
