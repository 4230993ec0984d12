"""/metrics behind BGSVC_METRICS_TOKEN, and without it no series named after a key when
keys are required."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import values
from prometheus_client.values import MultiProcessValue
from pydantic import ValidationError

from bgsvc.config import Settings
from bgsvc.metrics import Metrics
from tests.auth.conftest import PEPPER, FakeLimits, add_key

TOKEN = "scrape-token-0123456789abcdef"


@pytest.fixture
def keyed(make_client: Callable[..., TestClient], tmp_path: Path) -> Callable[..., TestClient]:
    """An app with keys required, and one request by key "ivy" already counted."""

    def factory(**overrides: Any) -> TestClient:
        data_dir = tmp_path / "data"
        secret = add_key(data_dir, "ivy", scopes=frozenset({"jobs"}))
        client = make_client(auth="required", auth_pepper=PEPPER, data_dir=data_dir, **overrides)
        client.app.state.limits = FakeLimits()  # type: ignore[attr-defined]
        # Refused for its scope: counted under the key's name.
        assert client.get("/remove-background", headers={"X-Api-Key": secret}).status_code == 403
        return client

    return factory


def test_with_a_token_metrics_is_401_without_it_or_with_a_wrong_one(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(metrics_token=TOKEN)
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"X-Api-Key": TOKEN},
    ):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["code"] == "unauthorized"
        assert "bgsvc_" not in response.text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_with_a_token_metrics_answers_its_bearer(
    make_client: Callable[..., TestClient], scheme: str
) -> None:
    client = make_client(metrics_token=TOKEN)
    response = client.get("/metrics", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert response.status_code == 200
    assert "bgsvc_http_requests_total" in response.text


def test_probes_stay_open_when_metrics_needs_a_token(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(metrics_token=TOKEN)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_with_keys_required_and_no_token_metrics_names_no_key(
    keyed: Callable[..., TestClient],
) -> None:
    client = keyed()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "bgsvc_http_requests_total" in response.text
    assert "bgsvc_auth_failures_total" in response.text
    assert "bgsvc_key_" not in response.text and "ivy" not in response.text


def test_with_keys_required_the_token_bearer_sees_the_per_key_series(
    keyed: Callable[..., TestClient],
) -> None:
    client = keyed(metrics_token=TOKEN)
    assert client.get("/metrics").status_code == 401
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'bgsvc_key_rejections_total{key="ivy",reason="scope"} 1.0' in text


def test_a_short_metrics_token_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="BGSVC_METRICS_TOKEN"):
        Settings(metrics_token="short")


def test_the_key_series_are_left_out_of_a_multiprocess_scrape_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", MultiProcessValue(lambda: 4242))
    metrics = Metrics(tmp_path)
    metrics.key_requests.labels("ivy", "200").inc()
    metrics.requests.labels("/jobs", "GET", "200").inc()
    full = metrics.render()[0].decode()
    assert 'bgsvc_key_requests_total{key="ivy",status="200"} 1.0' in full
    anonymous = metrics.render(tenants=False)[0].decode()
    assert "bgsvc_key_" not in anonymous and "ivy" not in anonymous
    assert "bgsvc_http_requests_total" in anonymous
