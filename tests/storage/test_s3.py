"""The s3:// backend against moto's S3 server on loopback: keys under the prefix,
presigned URLs a plain HTTP client can fetch, the documented lifecycle rule, failures."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bgsvc.errors import StorageConfigError, StorageUnavailable
from bgsvc.storage.s3 import S3Store

DOC = Path(__file__).resolve().parents[2] / "docs" / "storage.md"


def test_objects_live_under_the_prefix_with_their_content_type(
    make_s3_store: Callable[..., S3Store],
) -> None:
    store = make_s3_store()
    store.put("jobs/j1/result.webp", b"RIFF", "image/webp")
    listed = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["results/jobs/j1/result.webp"]
    head = store.client.head_object(Bucket=store.bucket, Key="results/jobs/j1/result.webp")
    assert head["ContentType"] == "image/webp"


def test_a_presigned_url_serves_the_bytes_to_a_plain_http_client(
    make_s3_store: Callable[..., S3Store],
) -> None:
    store = make_s3_store(presign=True, presign_expires_s=900)
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
    store.put("jobs/j1/result.png", data, "image/png")
    url = store.url("jobs/j1/result.png")
    assert url is not None
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["900"]
    with httpx.Client(timeout=10) as client:
        answer = client.get(url)
        assert answer.status_code == 200
        assert answer.content == data
        assert answer.headers["content-type"] == "image/png"
    # moto does not check signatures, so that a forged URL is refused is S3's (and MinIO's)
    # part and not tested here; what is: the URL is signed, for the key under the prefix.
    assert "X-Amz-Signature=" in url and "/results/jobs/j1/result.png?" in url


def test_sweep_leaves_expiry_to_the_bucket(make_s3_store: Callable[..., S3Store]) -> None:
    store = make_s3_store(ttl_s=1.0, clock=lambda: 4e9)
    store.put("jobs/j1/result.png", b"x", "image/png")
    assert store.sweep() == 0
    assert store.client.list_objects_v2(Bucket=store.bucket)["KeyCount"] == 1


def _documented_lifecycle_rule() -> dict[str, object]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    rules = [json.loads(b) for b in blocks if '"Rules"' in b]
    assert len(rules) == 1, "docs/storage.md shows one lifecycle configuration"
    rule: dict[str, object] = rules[0]
    return rule


def test_the_documented_lifecycle_rule_is_accepted_by_an_s3_api(
    make_s3_store: Callable[..., S3Store],
) -> None:
    store = make_s3_store()
    config = _documented_lifecycle_rule()
    # boto3 checks the shape against the S3 API model before sending; the server stores it.
    store.client.put_bucket_lifecycle_configuration(
        Bucket=store.bucket, LifecycleConfiguration=config
    )
    (rule,) = store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["Expiration"]["Days"] == 1  # the default BGSVC_JOB_TTL_S, 24 h
    assert rule["Filter"]["Prefix"] == "results/"
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1


def test_an_unreachable_endpoint_is_storage_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: connections are refused at once.
    store = S3Store("bucket", "results", 60.0, endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(StorageUnavailable, match="cannot read jobs/j1") as caught:
        store.get("jobs/j1")
    assert caught.value.code == "storage_unavailable" and caught.value.status == 503


def test_without_boto3_an_s3_url_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(StorageConfigError, match=r"bgsvc\[s3\]"):
        S3Store("bucket", "results", 60.0)
