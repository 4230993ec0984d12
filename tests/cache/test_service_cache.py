"""The result cache seen through HTTP: X-Cache, metrics, and when it must not answer."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.conftest import encode_image, subject_image


def test_repeat_upload_is_a_hit_with_identical_bytes(client: TestClient, photo_png: bytes) -> None:
    first = client.post("/remove-background", files={"file": ("a.png", photo_png)})
    second = client.post("/remove-background", files={"file": ("a.png", photo_png)})
    assert first.status_code == second.status_code == 200
    assert first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "HIT"
    assert second.content == first.content
    assert second.headers["X-Foreground-Width"] == first.headers["X-Foreground-Width"]
    assert "cache;dur=" in second.headers["Server-Timing"]


def test_different_options_or_bytes_miss(client: TestClient, photo_png: bytes) -> None:
    client.post("/remove-background", files={"file": ("a.png", photo_png)})
    other_format = client.post(
        "/remove-background?format=webp", files={"file": ("a.png", photo_png)}
    )
    other_image = client.post(
        "/remove-background",
        files={"file": ("b.png", encode_image(subject_image((100, 90))))},
    )
    assert other_format.headers["X-Cache"] == "MISS"
    assert other_image.headers["X-Cache"] == "MISS"


def test_hits_and_misses_are_counted_in_metrics(client: TestClient, photo_png: bytes) -> None:
    for _ in range(3):
        client.post("/remove-background", files={"file": ("a.png", photo_png)})
    text = client.get("/metrics").text
    assert 'bgsvc_result_cache_lookups_total{result="hit"} 2.0' in text
    assert 'bgsvc_result_cache_lookups_total{result="miss"} 1.0' in text
    assert "bgsvc_result_cache_bytes" in text


def test_disabled_cache_sends_no_header(
    make_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = make_client(result_cache_bytes=0)
    for _ in range(2):
        response = client.post("/remove-background", files={"file": ("a.png", photo_png)})
        assert response.status_code == 200
        assert "X-Cache" not in response.headers


def test_errors_are_not_cached(client: TestClient) -> None:
    for _ in range(2):
        response = client.post(
            "/remove-background", content=b"not an image", headers={"content-type": "image/png"}
        )
        assert response.status_code in (400, 415)
        assert "X-Cache" not in response.headers
