from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bgsvc.auth.sqlite import SqliteKeyStore
from tests.auth.conftest import FakeLimits, add_key

AuthClient = Callable[..., tuple[TestClient, FakeLimits]]


def _upload(png: bytes, field: str = "file") -> dict[str, tuple[str, bytes, str]]:
    return {field: ("a.png", png, "image/png")}


def test_no_key_is_401_with_a_bearer_challenge(auth_client: AuthClient, photo_png: bytes) -> None:
    client, _ = auth_client()
    r = client.post("/remove-background", files=_upload(photo_png))
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == 'Bearer realm="bgsvc"'
    assert "ratelimit" not in r.headers


def test_unknown_key_is_401(auth_client: AuthClient, photo_png: bytes) -> None:
    client, _ = auth_client()
    r = client.post(
        "/api/remove", files=_upload(photo_png), headers={"X-Api-Key": "bgsvc_nonsense"}
    )
    assert r.status_code == 401 and r.json()["message"] == "The API key is not valid."


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_a_valid_key_is_accepted_either_way(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes, style: str
) -> None:
    secret = add_key(data_dir, "alice")
    client, _ = auth_client()
    headers = (
        {"X-Api-Key": secret} if style == "x-api-key" else {"Authorization": f"Bearer {secret}"}
    )
    r = client.post("/remove-background", files=_upload(photo_png), headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_every_api_route_needs_a_key(auth_client: AuthClient) -> None:
    client, _ = auth_client()
    for method, path in [
        ("POST", "/remove-background"),
        ("POST", "/api/remove"),
        ("GET", "/api/remove"),
        ("POST", "/v1.0/removebg"),
        ("GET", "/v1.0/account"),
        ("POST", "/jobs"),
        ("GET", "/jobs/job_x"),
        ("GET", "/jobs/job_x/result"),
        ("POST", "/batches"),
        ("GET", "/batches/b_x"),
    ]:
        assert client.request(method, path).status_code == 401, (method, path)


def test_probes_metrics_page_and_static_files_stay_open(auth_client: AuthClient) -> None:
    client, _ = auth_client()
    for path in ("/health", "/ready", "/metrics", "/", "/static/app.js", "/models"):
        assert client.get(path).status_code == 200, path


def test_revoked_key_is_403(auth_client: AuthClient, data_dir: Path, photo_png: bytes) -> None:
    secret = add_key(data_dir, "bob")
    client, _ = auth_client()
    store = SqliteKeyStore(data_dir / "keys.sqlite3")
    store.revoke("bob", time.time())
    store.close()
    r = client.post("/remove-background", files=_upload(photo_png), headers={"X-Api-Key": secret})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"


def test_a_scope_not_granted_is_403(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes
) -> None:
    secret = add_key(data_dir, "jobs-only", scopes=frozenset({"jobs"}))
    client, _ = auth_client()
    r = client.post("/remove-background", files=_upload(photo_png), headers={"X-Api-Key": secret})
    assert r.status_code == 403 and "'remove' scope" in r.json()["message"]
    assert client.get("/jobs/job_x", headers={"X-Api-Key": secret}).status_code == 404


def test_quota_used_up_is_402_and_failures_are_refunded(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes
) -> None:
    secret = add_key(data_dir, "carol", quota=2)
    client, fake = auth_client()
    headers = {"X-Api-Key": secret}
    bad = client.post("/remove-background", files=_upload(b"not an image"), headers=headers)
    assert bad.status_code == 415 and fake.refunds == ["carol"] and fake.used["carol"] == 0
    for _ in range(2):
        ok = client.post("/remove-background", files=_upload(photo_png), headers=headers)
        assert ok.status_code == 200
    r = client.post("/remove-background", files=_upload(photo_png), headers=headers)
    assert r.status_code == 402 and r.json()["code"] == "quota_exceeded"
    assert fake.used["carol"] == 2


def test_rate_limited_is_429_with_retry_after_and_ratelimit_headers(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes
) -> None:
    secret = add_key(data_dir, "dave", rate="60/min")
    client, fake = auth_client(FakeLimits(refuse_rate=True))
    r = client.post("/remove-background", files=_upload(photo_png), headers={"X-Api-Key": secret})
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert r.headers["retry-after"] == "7"
    assert r.headers["ratelimit-policy"] == '"default";q=60;w=60'
    assert r.headers["ratelimit"] == '"default";r=0;t=60'
    assert fake.hits[0][1].limit == 60 and fake.hits[0][1].burst == 60


def test_success_carries_the_ratelimit_headers(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes
) -> None:
    secret = add_key(data_dir, "erin", rate="10/s", burst=20)
    client, fake = auth_client()
    r = client.post("/remove-background", files=_upload(photo_png), headers={"X-Api-Key": secret})
    assert r.status_code == 200
    assert r.headers["ratelimit-policy"] == '"default";q=10;w=1'
    assert r.headers["ratelimit"] == '"default";r=9;t=1'
    assert "x-ratelimit-limit" not in r.headers
    assert fake.hits[0][1].burst == 20


def test_removebg_errors_keep_its_shape(auth_client: AuthClient, photo_png: bytes) -> None:
    client, _ = auth_client()
    r = client.post("/v1.0/removebg", files=_upload(photo_png, "image_file"))
    assert r.status_code == 401
    assert r.json()["errors"] == [
        {
            "title": "An API key is required: send X-Api-Key or Authorization: Bearer.",
            "code": "unauthorized",
        }
    ]
    assert r.headers["x-credits-charged"] == "0"


def test_removebg_gets_x_ratelimit_headers_and_charges_one_credit(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes
) -> None:
    secret = add_key(data_dir, "frank", rate="60/min", quota=100)
    client, fake = auth_client()
    before = time.time()
    r = client.post(
        "/v1.0/removebg", files=_upload(photo_png, "image_file"), headers={"X-Api-Key": secret}
    )
    assert r.status_code == 200
    assert r.headers["x-credits-charged"] == "1"
    assert r.headers["x-ratelimit-limit"] == "60"
    assert r.headers["x-ratelimit-remaining"] == "59"
    assert before < int(r.headers["x-ratelimit-reset"]) <= time.time() + 2
    assert fake.used["frank"] == 1


def test_credits_a_failing_open_store_did_not_record_are_neither_reported_nor_given_back(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes
) -> None:
    # Otherwise a key could earn credits from an outage: each item of a batch sent while
    # the store was down that fails gives back, once the store is back, what it never took.
    secret = add_key(data_dir, "ivy", quota=100)
    client, fake = auth_client(FakeLimits(down=True))
    headers = {"X-Api-Key": secret}
    done = client.post("/remove-background", files=_upload(photo_png), headers=headers)
    assert done.status_code == 200 and done.headers["x-credits-charged"] == "0"
    broken = ("b.png", b"not an image", "image/png")
    failed = client.post("/remove-background", files={"file": broken}, headers=headers)
    assert failed.status_code == 415 and failed.headers["x-credits-charged"] == "0"
    files = [("file", ("a.png", photo_png, "image/png")), ("file", broken)]
    batch = client.post("/batches", files=files, headers=headers)
    assert batch.status_code == 202 and batch.headers["x-credits-charged"] == "0"
    fake.down = False
    deadline = time.monotonic() + 15
    while client.get(batch.json()["status_url"], headers=headers).json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert fake.refunds == [] and fake.used == {}


def test_account_tells_the_credits_left(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes
) -> None:
    secret = add_key(data_dir, "gina", quota=10)
    unlimited = add_key(data_dir, "hank")
    client, fake = auth_client()
    fake.used["gina"] = 3
    r = client.get("/v1.0/account", headers={"X-Api-Key": secret})
    assert r.status_code == 200
    assert r.json()["data"]["attributes"] == {
        "credits": {"total": 7, "subscription": 7, "payg": 0, "enterprise": 0},
        "api": {"free_calls": 0, "sizes": "all"},
    }
    r = client.get("/v1.0/account", headers={"Authorization": f"Bearer {unlimited}"})
    assert r.json()["data"]["attributes"]["credits"]["total"] is None


def test_failed_auth_is_counted_per_client_address_and_throttled(
    auth_client: AuthClient,
) -> None:
    client, fake = auth_client(FakeLimits(failed_auth_budget=1))
    # The test client's peer is "testclient", not a trusted proxy: its X-Forwarded-For is
    # the client's own claim and is ignored.
    first = client.get("/jobs/x", headers={"X-Forwarded-For": "203.0.113.9"})
    assert first.status_code == 401
    second = client.get("/jobs/x", headers={"X-Api-Key": "wrong"})
    assert second.status_code == 429 and second.headers["retry-after"] == "30"
    assert fake.failed_from == ["testclient", "testclient"]


def test_a_throttled_client_gets_one_warning_not_one_per_request(
    auth_client: AuthClient, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = auth_client(FakeLimits(failed_auth_budget=1))
    caplog.set_level(logging.WARNING, logger="bgsvc.auth.middleware")
    answers = [client.get("/jobs/x", headers={"X-Api-Key": "wrong"}).status_code for _ in range(6)]
    assert answers == [401] + [429] * 5
    throttled = [r for r in caplog.records if "throttled" in r.getMessage()]
    assert len(throttled) == 1


def test_a_trusted_proxy_names_the_client(auth_client: AuthClient) -> None:
    client, fake = auth_client(trusted_proxies="10.0.0.0/8")
    scope_client = TestClient(client.app, client=("10.1.2.3", 5000))
    r = scope_client.get(
        "/jobs/x", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.0.0.2"}
    )
    assert r.status_code == 401
    assert fake.failed_from == ["203.0.113.7"]


def test_auth_off_changes_nothing(make_client: Callable[..., TestClient], photo_png: bytes) -> None:
    client = make_client()
    r = client.post("/v1.0/removebg", files=_upload(photo_png, "image_file"))
    assert r.status_code == 200 and r.headers["x-credits-charged"] == "0"
    assert "ratelimit" not in r.headers and "www-authenticate" not in r.headers
    account = client.get("/v1.0/account").json()["data"]["attributes"]["credits"]
    assert account["total"] is None


def test_metrics_count_requests_and_rejections_by_key(
    auth_client: AuthClient, data_dir: Path, photo_png: bytes
) -> None:
    secret = add_key(data_dir, "ivy", scopes=frozenset({"jobs"}))
    # Series named after keys are only for the bearer of the metrics token.
    token = "scrape-token-0123456789abcdef"
    client, _ = auth_client(metrics_token=token)
    client.post("/remove-background", files=_upload(photo_png), headers={"X-Api-Key": secret})
    client.get("/jobs/x")
    text = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert 'bgsvc_key_rejections_total{key="ivy",reason="scope"} 1.0' in text
    assert 'bgsvc_key_requests_total{key="ivy",status="403"}' not in text
    assert 'bgsvc_auth_failures_total{reason="missing"} 1.0' in text
