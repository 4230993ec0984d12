"""A batch upload as (name, bytes) items: repeated multipart ``file`` fields or one zip.

A zip is refused before its directory is parsed when its end record declares too many
entries (directories and skipped files count: 200,000 empty directories are as much work)
or a directory too large for that many, before anything is unpacked when its directory
declares too many images or too many bytes, and every entry is read through a cap, since
the declared sizes are the uploader's word. Unpacking is CPU work: callers run it in a
thread, never on the event loop.
"""

from __future__ import annotations

import io
import posixpath
import re
import struct
import zipfile
from dataclasses import dataclass

from bgsvc.errors import BatchTooLarge, InvalidArchive

ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Limits:
    max_items: int
    # Per image (BGSVC_MAX_UPLOAD_BYTES) and for all of them (BGSVC_BATCH_MAX_BYTES).
    max_item_bytes: int
    max_total_bytes: int


@dataclass(frozen=True)
class Item:
    name: str
    data: bytes


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def base_name(name: str, index: int) -> str:
    """The file name without directories (never a path a client's unzip could follow) and
    without control characters (a newline or an escape would reach whatever prints the
    batch's JSON or lists its zip), each replaced by '_'; at most 255 characters."""
    base = posixpath.basename(name.replace("\\", "/")).strip()
    base = _CONTROLS.sub("_", base)[:255]
    return base or f"item-{index + 1}"


def is_zip(filename: str, content_type: str, data: bytes) -> bool:
    return (content_type in ZIP_TYPES or filename.lower().endswith(".zip")) and data.startswith(
        b"PK"
    )


def check_count(count: int, limits: Limits) -> None:
    if count > limits.max_items:
        raise BatchTooLarge(f"A batch holds at most {limits.max_items} images, not {count}.")


def _skipped(info: zipfile.ZipInfo) -> bool:
    # Directories and the metadata archivers add (macOS resource forks, dotfiles).
    base = posixpath.basename(info.filename)
    return info.is_dir() or info.filename.startswith("__MACOSX/") or base.startswith(".")


_END = b"PK\x05\x06"
_END_SIZE = 22
_END64_LOCATOR = b"PK\x06\x07"
_END64_LOCATOR_SIZE = 20
_END64 = b"PK\x06\x06"
_END64_SIZE = 56
_MAX_COMMENT = 0xFFFF
# A directory entry is 46 bytes plus its name, extra field and comment: 1 KiB each is far
# more than archivers write for a photo, and bounds the parse of a directory whose entry
# count lies.
DIRECTORY_BYTES_PER_ENTRY = 1024


def declared_directory(data: bytes) -> tuple[int, int]:
    """(entries, directory bytes) as the zip's end record says, zip64 included, found the
    way zipfile finds it (the last end signature in the trailing 64 KiB)."""
    end = data.rfind(_END, max(0, len(data) - _END_SIZE - _MAX_COMMENT))
    if end < 0 or len(data) - end < _END_SIZE:
        raise InvalidArchive("Not a readable zip: no end of central directory record.")
    entries, size = struct.unpack_from("<HI", data, end + 10)
    locator = end - _END64_LOCATOR_SIZE
    if locator >= 0 and data[locator : locator + 4] == _END64_LOCATOR:
        # zipfile then reads the zip64 record just before the locator, and believes it.
        record = locator - _END64_SIZE
        if record < 0 or data[record : record + 4] != _END64:
            raise InvalidArchive("Not a readable zip: a broken zip64 end record.")
        entries, size = struct.unpack_from("<QQ", data, record + 32)
    return entries, size


def check_entries(data: bytes, max_entries: int) -> None:
    """BatchTooLarge when the end record declares more than ``max_entries`` entries or a
    directory larger than that many need; reads 22 bytes (78 more for zip64)."""
    entries, size = declared_directory(data)
    if entries > max_entries:
        raise BatchTooLarge(
            f"A batch zip holds at most {max_entries} entries, directories included; "
            f"this one holds {entries}."
        )
    if size > max_entries * DIRECTORY_BYTES_PER_ENTRY:
        raise BatchTooLarge(
            f"The zip's directory is {size} bytes, more than {max_entries} entries need."
        )


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    out = bytearray()
    with archive.open(info) as entry:
        while chunk := entry.read(_CHUNK):
            out += chunk
            if len(out) > cap:
                raise BatchTooLarge(f"{info.filename} unpacks past {cap} bytes.")
    return bytes(out)


def unzip(data: bytes, limits: Limits, max_entries: int) -> list[Item]:
    """The image entries of a zip, in archive order; at most ``max_entries`` entries of any
    kind. Raises InvalidArchive, BatchTooLarge. Blocking: run it in a thread."""
    check_entries(data, max_entries)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise InvalidArchive(f"Not a readable zip: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > max_entries:
            # The end record understated them; the directory's size still bounded the parse.
            raise BatchTooLarge(
                f"A batch zip holds at most {max_entries} entries, directories included."
            )
        entries = [info for info in infos if not _skipped(info)]
        check_count(len(entries), limits)
        declared = 0
        for info in entries:
            if info.file_size > limits.max_item_bytes:
                raise BatchTooLarge(
                    f"{info.filename} unpacks to {info.file_size} bytes; the limit per image "
                    f"is {limits.max_item_bytes}."
                )
            declared += info.file_size
        if declared > limits.max_total_bytes:
            raise BatchTooLarge(
                f"The zip unpacks to {declared} bytes; the limit is {limits.max_total_bytes}."
            )
        items: list[Item] = []
        total = 0
        for index, info in enumerate(entries):
            try:
                body = _read_capped(archive, info, min(limits.max_item_bytes, info.file_size))
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                # Corrupt, encrypted or an unsupported compression: the archive as a whole
                # is refused (a client fixes and resends one file).
                raise InvalidArchive(f"{info.filename}: {exc}") from None
            total += len(body)
            if total > limits.max_total_bytes:
                raise BatchTooLarge(f"The zip unpacks past {limits.max_total_bytes} bytes.")
            items.append(Item(base_name(info.filename, index), body))
    if not items:
        raise InvalidArchive("The zip holds no file.")
    return items
