"""BGSVC_STORAGE_URL to a backend, and the clear errors for URLs that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bgsvc.config import Settings
from bgsvc.errors import StorageConfigError
from bgsvc.storage import FilesystemStore, open_store
from bgsvc.storage.s3 import S3Store


def test_the_default_store_is_a_results_directory_under_the_data_dir(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path / "data", job_ttl_s=120))
    assert isinstance(store, FilesystemStore)
    assert store.root == (tmp_path / "data" / "results").resolve() and store.root.is_dir()
    assert store.ttl_s == 120


def test_a_file_url_names_the_directory(tmp_path: Path) -> None:
    store = open_store(Settings(storage_url=f"file://{tmp_path}/my%20results"))
    assert isinstance(store, FilesystemStore) and store.root == tmp_path / "my results"


def test_an_s3_url_names_bucket_prefix_and_the_endpoint_settings(
    s3_endpoint: str,
) -> None:
    settings = Settings(
        storage_url="s3://results-bucket/bgsvc/out/",
        s3_endpoint_url=s3_endpoint,
        s3_presign=True,
        s3_presign_expires_s=120,
        job_ttl_s=7200,
    )
    store = open_store(settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        "results-bucket",
        "bgsvc/out/",
        s3_endpoint,
    )
    assert (store.presign, store.presign_expires_s, store.ttl_s) == (True, 120, 7200)
    assert store.describe() == f"s3://results-bucket/bgsvc/out/ at {s3_endpoint}"


@pytest.mark.parametrize("url", ["ftp://host/x", "redis://localhost/0", "/just/a/path", "s3://"])
def test_an_unusable_storage_url_stops_the_settings_with_a_clear_message(url: str) -> None:
    with pytest.raises(ValidationError, match=r"BGSVC_STORAGE_URL .*file:///absolute/path"):
        Settings(storage_url=url)


def test_the_environment_variable_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGSVC_STORAGE_URL", "gs://bucket/prefix")
    with pytest.raises(ValidationError, match="gs://bucket/prefix"):
        Settings()


@pytest.mark.parametrize("url", ["file://host/share/results", "file://relative"])
def test_a_file_url_with_a_host_is_a_config_error(url: str) -> None:
    with pytest.raises(StorageConfigError, match="file:///absolute/path") as caught:
        open_store(Settings(storage_url=url))
    assert caught.value.code == "storage_config"
