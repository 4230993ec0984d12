"""The messages between the serving process and its media child, over the child's stdin
and stdout: a kind (one byte), a JSON header and a binary payload, each length-prefixed.

Parent to child: ``C`` the configuration (first), ``V`` the upload, ``R`` one finished
frame's pixels (in order), ``Q`` no more frames will come; to an encoding child, ``B``
a segment begins. Child to parent: ``I`` the video's headers, once within limits; ``F``
one decoded frame; ``N`` no more frames; ``D`` the encoded result; ``E`` an error (its
stable code and message); ``S`` a segment's child still decoding its way to the
segment's first frame; ``A`` an encoding child ready for a segment's frames.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

HEAD = struct.Struct("!cIQ")
# A segment's child sends ``S`` after every this many frames it decodes before its range.
SKIPPED_EVERY = 16
# A header is a few hundred bytes of JSON: a longer one is a broken stream.
MAX_META = 1 << 20
# What each pipe between the two holds (Linux's default 64 KB takes a 1080p frame in
# 128 writes, each a wake-up of the reader); 1 MB is what an unprivileged process may set.
PIPE_BYTES = 1 << 20


def widen(fd: int) -> None:
    """The pipe at ``fd`` made to hold PIPE_BYTES, where the system allows."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


@dataclass
class Message:
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""


def pack_head(kind: str, meta: dict[str, Any], payload_len: int) -> bytes:
    """The bytes before the payload."""
    body = json.dumps(meta).encode()
    return HEAD.pack(kind.encode(), len(body), payload_len) + body


def unpack_head(head: bytes) -> tuple[str, int, int]:
    """Kind, header length and payload length; ValueError for a header no side writes
    (one cut short included: a child that died before answering)."""
    if len(head) != HEAD.size:
        raise ValueError(f"a message header of {len(head)} bytes, not {HEAD.size}")
    kind, meta_len, payload_len = HEAD.unpack(head)
    if meta_len > MAX_META:
        raise ValueError(f"a message header of {meta_len} bytes")
    return kind.decode("ascii"), meta_len, payload_len


def write(
    stream: BinaryIO, kind: str, meta: dict[str, Any], payload: bytes | memoryview = b""
) -> None:
    """One message on a blocking stream (the child's side); the payload may be an array's
    memory, written without a copy."""
    view = memoryview(payload).cast("B")
    stream.write(pack_head(kind, meta, view.nbytes))
    if view.nbytes:
        stream.write(view)
    stream.flush()


def _exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("the stream ended inside a message")
    return data


def read(stream: BinaryIO, max_payload: int) -> Message:
    """One message from a blocking stream (the child's side); EOFError at its end."""
    kind, meta_len, payload_len = unpack_head(_exactly(stream, HEAD.size))
    if payload_len > max_payload:
        raise ValueError(f"a payload of {payload_len} bytes")
    meta = json.loads(_exactly(stream, meta_len)) if meta_len else {}
    payload = _exactly(stream, payload_len) if payload_len else b""
    return Message(kind, meta, payload)
