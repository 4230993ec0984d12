"""The page's security headers and CORS for pages served elsewhere (bgsvc.web.security)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from bgsvc.config import Settings

ALLOWED = "https://app.example"
OTHER = "https://evil.example"


@pytest.fixture
def cors_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(cors_origins=f" {ALLOWED}/ , http://localhost:3000")


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css"])
def test_page_and_its_files_carry_the_csp_and_browser_headers(
    client: TestClient, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    csp = [d.strip() for d in response.headers["content-security-policy"].split(";")]
    assert csp[0] == "default-src 'self'"
    assert "img-src 'self' blob:" in csp and "frame-ancestors 'none'" in csp
    assert "media-src 'self' blob:" in csp
    assert "unsafe-inline" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def test_preflight_from_an_allowed_origin_allows_the_key_headers(cors_client: TestClient) -> None:
    response = cors_client.options(
        "/remove-background",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, authorization, idempotency-key",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"x-api-key", "authorization", "idempotency-key"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    assert int(response.headers["access-control-max-age"]) > 0
    # Keys travel in headers, never cookies: no credentialed requests.
    assert "access-control-allow-credentials" not in response.headers


def test_answers_to_an_allowed_origin_expose_the_limit_and_result_headers(
    cors_client: TestClient, photo_png: bytes
) -> None:
    response = cors_client.post(
        "/remove-background",
        files={"file": ("p.png", photo_png, "image/png")},
        headers={"Origin": "http://localhost:3000"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-remaining",
        "x-credits-charged",
        "retry-after",
        "location",
        "x-cache",
        "x-request-id",
        "x-width",
    } <= exposed
    # A refusal carries them too, so the page can read why.
    refused = cors_client.post("/remove-background", headers={"Origin": ALLOWED})
    assert refused.status_code == 400
    assert refused.headers["access-control-allow-origin"] == ALLOWED


def test_a_disallowed_origin_gets_no_cors_headers(cors_client: TestClient) -> None:
    preflight = cors_client.options(
        "/remove-background",
        headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    response = cors_client.get("/models", headers={"Origin": OTHER})
    assert response.status_code == 200
    # What a browser checks before letting the page read anything. (Starlette sends its
    # expose list on every answer; without an allowed origin it grants nothing.)
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-headers" not in response.headers


def test_without_cors_origins_no_origin_gets_cors_headers(client: TestClient) -> None:
    preflight = client.options(
        "/remove-background",
        headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    response = client.get("/models", headers={"Origin": ALLOWED})
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_cors_origins_are_trimmed_and_a_tls_cert_needs_its_key(tmp_path: Path) -> None:
    settings = Settings(cors_origins=" https://a.example/ ,,http://b.example:8080 ")
    assert settings.cors_origin_list == ["https://a.example", "http://b.example:8080"]
    with pytest.raises(ValidationError, match="BGSVC_TLS_CERT and BGSVC_TLS_KEY"):
        Settings(tls_cert=tmp_path / "cert.pem")
