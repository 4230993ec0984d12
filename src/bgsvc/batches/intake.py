"""A batch upload as (name, bytes) items: repeated multipart ``file`` fields or one zip.

A zip is refused before anything is unpacked when its directory declares too many entries
or too many bytes, and every entry is read through a cap, since the declared sizes are the
uploader's word.
"""

from __future__ import annotations

import io
import posixpath
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


def base_name(name: str, index: int) -> str:
    """The file name without directories (never a path a client's unzip could follow)."""
    base = posixpath.basename(name.replace("\\", "/")).strip()
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


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    out = bytearray()
    with archive.open(info) as entry:
        while chunk := entry.read(_CHUNK):
            out += chunk
            if len(out) > cap:
                raise BatchTooLarge(f"{info.filename} unpacks past {cap} bytes.")
    return bytes(out)


def unzip(data: bytes, limits: Limits) -> list[Item]:
    """The image entries of a zip, in archive order. Raises InvalidArchive, BatchTooLarge."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise InvalidArchive(f"Not a readable zip: {exc}") from None
    with archive:
        entries = [info for info in archive.infolist() if not _skipped(info)]
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
