"""Jobs on S3 with presigned results and API keys: the redirect is the owner's alone, and
the objects sit under the owner's folder of the bucket."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
from fastapi.testclient import TestClient

from bgsvc.auth.base import ApiKey
from bgsvc.auth.factory import open_store
from bgsvc.auth.keys import digest_of, new_secret
from tests.conftest import encode_image, subject_image

PEPPER = "presign-test-pepper-0123456789"


def test_a_presigned_result_is_handed_to_its_owner_only(
    make_client: Callable[..., TestClient], s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = f"bgsvc-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    client = make_client(
        auth="required",
        auth_pepper=PEPPER,
        data_dir=tmp_path / "data",
        storage_url=f"s3://{bucket}/results",
        s3_endpoint_url=s3_endpoint,
        s3_presign=True,
    )
    store = open_store(client.app.state.bgsvc.settings)  # type: ignore[attr-defined]
    keys: dict[str, dict[str, str]] = {}
    try:
        for name in ("a", "b"):
            secret = new_secret()
            store.add(ApiKey(name=name, digest=digest_of(secret, PEPPER)))
            keys[name] = {"X-Api-Key": secret}
    finally:
        store.close()
    image = encode_image(subject_image())
    files = {"file": ("photo.png", image, "image/png")}
    job = client.post("/jobs", files=files, headers=keys["a"]).json()
    deadline = time.monotonic() + 15
    while client.get(job["status_url"], headers=keys["a"]).json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    owner = client.get(job["result_url"], headers=keys["a"], follow_redirects=False)
    assert owner.status_code == 307
    assert f"/results/tenants/a/jobs/{job['id']}/result.png" in owner.headers["location"]
    other = client.get(job["result_url"], headers=keys["b"], follow_redirects=False)
    assert other.status_code == 404
    assert "location" not in other.headers
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="results/")
    assert {o["Key"].split("/")[1] for o in listed.get("Contents", [])} == {"tenants"}
