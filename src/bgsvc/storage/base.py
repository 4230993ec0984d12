"""What a result store keeps, how keys look, and the interface both backends implement."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Keys are made by the service (job ids, file names), never taken raw from a client: a
# small alphabet keeps them safe as file paths and as S3 keys alike. A segment may not
# start with a dot, which leaves dot-names to the filesystem backend's temporary files and
# sidecars.
_SEGMENT = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,199}")
MAX_KEY_LENGTH = 512


def check_key(key: str) -> str:
    """``key`` if it is a valid store key (``a/b/c.png``), else ValueError."""
    segments = key.split("/")
    if len(key) > MAX_KEY_LENGTH or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise ValueError(
            f"invalid store key {key!r}: '/'-separated segments of letters, digits, '_', '-', "
            "'.', not starting with '.'"
        )
    return key


@dataclass(frozen=True)
class StoredObject:
    """A published object, read whole (results are images of a few MB at most)."""

    key: str
    data: bytes
    content_type: str
    # Seconds since the epoch when it was published.
    modified: float

    @property
    def size(self) -> int:
        """Length of ``data`` in bytes."""
        return len(self.data)


class ResultStore(Protocol):
    """Where job results (and, when kept, originals) live until they expire.

    ``put`` publishes atomically: a reader sees the previous object or the whole new one,
    never a part, even when the writer is killed in the middle.
    """

    def put(self, key: str, data: bytes | BinaryIO, content_type: str) -> None:
        """Publish ``data`` (bytes, or a binary file read to its end) under ``key``."""
        ...

    def get(self, key: str) -> StoredObject | None:
        """The object under ``key``, or None when there is none (or it expired)."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is not there."""
        ...

    def url(self, key: str) -> str | None:
        """A URL a client can GET the object from without the service (a presigned S3
        URL), or None when the backend has none or it is off: serve the bytes instead."""
        ...

    def sweep(self) -> int:
        """Delete the expired objects this process is responsible for; how many went.
        Backends that expire objects themselves (an S3 lifecycle rule) return 0."""
        ...

    def describe(self) -> str:
        """Where the objects go, for logs (no credentials)."""
        ...
