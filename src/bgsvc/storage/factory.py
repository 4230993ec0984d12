"""BGSVC_STORAGE_URL to a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from bgsvc.errors import StorageConfigError
from bgsvc.storage.base import ResultStore
from bgsvc.storage.filesystem import FilesystemStore

if TYPE_CHECKING:
    from bgsvc.config import Settings

USAGE = "use file:///absolute/path or s3://bucket/prefix"


def open_store(settings: Settings) -> ResultStore:
    """The store ``settings`` name: BGSVC_STORAGE_URL, or <data_dir>/results by default."""
    ttl = settings.job_ttl_s
    url = settings.storage_url
    if not url:
        return FilesystemStore(settings.data_dir.expanduser().resolve() / "results", ttl)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise StorageConfigError(f"BGSVC_STORAGE_URL {url!r}: {USAGE}")
        return FilesystemStore(Path(unquote(parts.path)), ttl)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageConfigError(f"BGSVC_STORAGE_URL {url!r}: no bucket; {USAGE}")
        from bgsvc.storage.s3 import S3Store

        return S3Store(
            parts.netloc,
            unquote(parts.path),
            ttl,
            endpoint_url=settings.s3_endpoint_url or None,
            presign=settings.s3_presign,
            presign_expires_s=settings.s3_presign_expires_s,
        )
    raise StorageConfigError(f"BGSVC_STORAGE_URL {url!r}: unknown scheme; {USAGE}")
