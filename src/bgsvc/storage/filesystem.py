"""The ``file://`` backend: one file per object under a directory, published by rename."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from bgsvc.errors import StorageConfigError, StorageUnavailable
from bgsvc.storage.base import DEFAULT_CONTENT_TYPE, StoredObject, check_key

log = logging.getLogger(__name__)

# A temporary file this old belongs to a writer that died (kill -9, power loss): no live
# writer takes an hour over one image. Empty directories wait a minute, so a writer that
# has just created its directory is not raced by the sweep.
TEMP_GRACE_S = 3600.0
EMPTY_DIR_GRACE_S = 60.0
_COPY_CHUNK = 1024 * 1024
_TMP_SUFFIX = ".tmp"
_META_SUFFIX = ".meta"


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}{_META_SUFFIX}")


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes | BinaryIO) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``:
    readers see the old file or the whole new one, and a killed writer leaves only a
    dot-named temporary file that no reader looks at (the sweep removes it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                shutil.copyfileobj(data, f, _COPY_CHUNK)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class FilesystemStore:
    """Objects are files under ``root`` named by their key; each one's content type sits in
    a dot-named sidecar that is published before the object itself, so a visible object
    always has its type. Objects older than ``ttl_s`` are invisible to :meth:`get` and
    deleted by :meth:`sweep`. Several processes may share the directory."""

    def __init__(self, root: Path, ttl_s: float, *, clock: Callable[[], float] = time.time) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.root = root
        self.ttl_s = ttl_s
        self.clock = clock
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageConfigError(f"result directory {root}: {exc.strerror}") from exc

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | BinaryIO, content_type: str) -> None:
        """Publish ``data`` under ``key`` atomically (see :func:`_atomic_write`)."""
        path = self._path(key)
        meta = json.dumps({"content_type": content_type}).encode()
        try:
            for attempt in range(3):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _atomic_write(_sidecar(path), meta)
                    _atomic_write(path, data)
                    break
                except FileNotFoundError:
                    # A concurrent sweep removed the (then empty) directory: make it again.
                    if attempt == 2:
                        raise
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StorageUnavailable(f"cannot store {key}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> StoredObject | None:
        """The object under ``key``; None when missing or expired."""
        path = self._path(key)
        try:
            with path.open("rb") as f:
                modified = os.fstat(f.fileno()).st_mtime
                if self.clock() - modified > self.ttl_s:
                    return None
                data = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc.strerror or exc}") from exc
        return StoredObject(key, data, self._content_type(path), modified)

    def _content_type(self, path: Path) -> str:
        try:
            value = json.loads(_sidecar(path).read_bytes()).get("content_type")
        except (OSError, ValueError, AttributeError):
            return DEFAULT_CONTENT_TYPE
        return value if isinstance(value, str) and value else DEFAULT_CONTENT_TYPE

    def delete(self, key: str) -> None:
        """Remove ``key`` (the object first, so it is never visible without its sidecar)."""
        path = self._path(key)
        for target in (path, _sidecar(path)):
            try:
                target.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageUnavailable(f"cannot delete {key}: {exc.strerror}") from exc

    def url(self, key: str) -> str | None:
        """None: local objects are served by the service itself."""
        check_key(key)
        return None

    def sweep(self) -> int:
        """Delete objects older than the TTL, temporary files of dead writers, orphaned
        sidecars and old empty directories; returns the number of objects deleted."""
        now = self.clock()
        deleted = 0
        for dirpath, _dirnames, filenames in os.walk(self.root, topdown=False):
            directory = Path(dirpath)
            for name in filenames:
                deleted += self._sweep_file(directory / name, now)
            if directory != self.root:
                self._remove_if_old_and_empty(directory, now)
        if deleted:
            log.info("storage sweep: %d expired object(s) deleted from %s", deleted, self.root)
        return deleted

    def _sweep_file(self, path: Path, now: float) -> int:
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            return 0  # another process swept it
        name = path.name
        if name.startswith("."):
            is_temp = name.endswith(_TMP_SUFFIX)
            orphan = (
                name.endswith(_META_SUFFIX)
                and not path.with_name(name[1 : -len(_META_SUFFIX)]).exists()
            )
            if (is_temp or orphan) and age > TEMP_GRACE_S:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return 0
        if age <= self.ttl_s:
            return 0
        try:
            path.unlink()
        except FileNotFoundError:
            return 0
        with contextlib.suppress(FileNotFoundError):
            _sidecar(path).unlink()
        return 1

    @staticmethod
    def _remove_if_old_and_empty(directory: Path, now: float) -> None:
        try:
            if now - directory.stat().st_mtime > EMPTY_DIR_GRACE_S:
                directory.rmdir()
        except OSError:
            pass  # not empty, or already gone

    def describe(self) -> str:
        """The directory."""
        return f"file://{self.root}"
