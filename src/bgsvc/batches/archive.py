"""The zip of a batch's results, written entry by entry as the response streams.

zipfile writes to an unseekable sink with data descriptors, so nothing but the current
entry is held in memory. Images are compressed already: entries are stored as they are.
"""

from __future__ import annotations

import posixpath
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio.to_thread

EXTENSIONS = {
    "image/png": "png",
    "image/webp": "webp",
    "image/jpeg": "jpg",
    "application/zip": "zip",
    "image/gif": "gif",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "video/mp4": "mp4",
}


def result_names(names: list[str], content_types: list[str]) -> list[str]:
    """Each upload's name with its output format's extension, made unique in order
    (``photo.png``, ``photo-2.png``...)."""
    taken: set[str] = set()
    out = []
    for name, content_type in zip(names, content_types, strict=True):
        stem = posixpath.splitext(name)[0] or name
        ext = EXTENSIONS.get(content_type, "bin")
        candidate, n = f"{stem}.{ext}", 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}.{ext}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


class _Sink:
    """A write-only file whose bytes the generator takes out after each entry."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


async def stream_zip(
    entries: list[tuple[str, Callable[[], Awaitable[bytes | None]]]],
) -> AsyncIterator[bytes]:
    """The zip of ``entries`` (name, loader); an entry whose loader gives None (its result
    expired meanwhile) is left out."""
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED)
    try:
        for name, load in entries:
            data = await load()
            if data is None:
                continue
            await anyio.to_thread.run_sync(archive.writestr, name, data)
            yield sink.take()
    finally:
        archive.close()
    yield sink.take()
