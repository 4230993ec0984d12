"""The ``s3://`` backend (boto3): AWS S3, MinIO or any S3-compatible store.

A PUT is atomic on S3 (an object appears whole or not at all; a multipart upload only on
completion), so no rename dance is needed. Expiry is the bucket's lifecycle rule
(docs/storage.md); :meth:`S3Store.get` hides objects past the TTL meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, BinaryIO

from bgsvc.errors import StorageConfigError, StorageUnavailable
from bgsvc.storage.base import DEFAULT_CONTENT_TYPE, StoredObject, check_key

_MISSING = {"NoSuchKey", "404", "NotFound"}


def _client(endpoint_url: str | None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ModuleNotFoundError as exc:
        raise StorageConfigError(
            "BGSVC_STORAGE_URL is s3:// but boto3 is not installed: pip install 'bgsvc[s3]'"
        ) from exc
    config = Config(
        signature_version="s3v4",
        # MinIO and moto answer on one host name; virtual-host buckets need DNS for each.
        s3={"addressing_style": "path"} if endpoint_url else {},
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    # Credentials and region: boto3's own chain (AWS_* variables, shared files, IAM roles).
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


class S3Store:
    """Objects under ``prefix`` in ``bucket``; presigned GET URLs when ``presign``."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        ttl_s: float,
        *,
        endpoint_url: str | None = None,
        presign: bool = False,
        presign_expires_s: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not bucket:
            raise StorageConfigError("s3:// storage URL without a bucket")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.ttl_s = ttl_s
        self.endpoint_url = endpoint_url or None
        self.presign = presign
        self.presign_expires_s = presign_expires_s
        self.clock = clock
        self.client = _client(self.endpoint_url)
        self._errors = _errors()

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _unavailable(self, what: str, key: str, exc: Exception) -> StorageUnavailable:
        return StorageUnavailable(f"cannot {what} {key} in {self.describe()}: {exc}")

    def put(self, key: str, data: bytes | BinaryIO, content_type: str) -> None:
        """Upload ``data``; visible only once complete."""
        full = self._key(key)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=bytes(data), ContentType=content_type
                )
            else:
                # Managed transfer: multipart for large files, published on completion.
                self.client.upload_fileobj(
                    data, self.bucket, full, ExtraArgs={"ContentType": content_type}
                )
        except self._errors as exc:
            raise self._unavailable("store", key, exc) from exc

    def get(self, key: str) -> StoredObject | None:
        """The object; None when missing or older than the TTL."""
        full = self._key(key)
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=full)
            modified = answer["LastModified"].timestamp()
            if self.clock() - modified > self.ttl_s:
                answer["Body"].close()
                return None
            data = answer["Body"].read()
        except self._errors as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in _MISSING:
                return None
            raise self._unavailable("read", key, exc) from exc
        content_type = str(answer.get("ContentType") or DEFAULT_CONTENT_TYPE)
        return StoredObject(key, bytes(data), content_type, float(modified))

    def delete(self, key: str) -> None:
        """Remove the object (S3 answers the same whether it existed or not)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors as exc:
            raise self._unavailable("delete", key, exc) from exc

    def url(self, key: str) -> str | None:
        """A presigned GET URL valid for ``presign_expires_s``, when presigning is on."""
        full = self._key(key)
        if not self.presign:
            return None
        try:
            return str(
                self.client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": full},
                    ExpiresIn=self.presign_expires_s,
                )
            )
        except self._errors as exc:
            raise self._unavailable("presign", key, exc) from exc

    def sweep(self) -> int:
        """Nothing: the bucket's lifecycle rule expires objects (docs/storage.md)."""
        return 0

    def describe(self) -> str:
        """Bucket, prefix and endpoint."""
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint_url or 'AWS'}"
