"""Stores for the storage tests: a temporary directory, and a bucket on a real
S3-compatible HTTP server (moto's standalone server) on a loopback port of its own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from bgsvc.storage import FilesystemStore, ResultStore
from bgsvc.storage.s3 import S3Store


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    # Port 0: the server binds a free port itself, so nothing can take it in between.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3 reads these itself; no profile or file of the machine running the tests."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def make_s3_store(s3_endpoint: str) -> Callable[..., S3Store]:
    """A store on a fresh bucket, so tests sharing the server never see each other."""

    def factory(**overrides: Any) -> S3Store:
        bucket = f"bgsvc-{uuid.uuid4().hex[:12]}"
        values: dict[str, Any] = {"ttl_s": 3600.0, "endpoint_url": s3_endpoint}
        values.update(overrides)
        store = S3Store(bucket, "results", **values)
        store.client.create_bucket(Bucket=bucket)
        return store

    return factory


@pytest.fixture(params=["filesystem", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., ResultStore]:
    """Either backend, with the same keyword arguments."""

    def factory(**overrides: Any) -> ResultStore:
        if request.param == "filesystem":
            values: dict[str, Any] = {"ttl_s": 3600.0, **overrides}
            return FilesystemStore(tmp_path / "results", **values)
        make_s3: Callable[..., S3Store] = request.getfixturevalue("make_s3_store")
        return make_s3(**overrides)

    return factory
