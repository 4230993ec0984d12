from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc.app import create_app
from bgsvc.config import Settings
from bgsvc.errors import ModelError
from bgsvc.inference.loader import load_engines
from bgsvc.pipeline import Predictor
from tests.conftest import encode_image, subject_image, wait_ready
from tests.imaging.test_decode import png_header_only


def post(client: TestClient, data: bytes, name: str = "x.png", path: str = "/remove-background"):  # type: ignore[no-untyped-def]
    return client.post(path, files={"file": (name, data, "application/octet-stream")})


def assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    assert body["request_id"] == response.headers["x-request-id"]


def test_rejects_upload_over_byte_limit(make_client, photo_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_upload_bytes=1000)
    assert_error(post(client, photo_png + b"\0" * 2000), 413, "upload_too_large")


def test_rejects_chunked_upload_over_byte_limit(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_upload_bytes=1000)

    def body():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"\0" * 500

    r = client.post("/remove-background", content=body(), headers={"content-type": "image/png"})
    assert_error(r, 413, "upload_too_large")


def test_rejects_image_over_pixel_limit(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_pixels=1_000_000)
    assert_error(post(client, png_header_only(2000, 1000)), 413, "image_too_large")


def test_a_tiny_file_declaring_7000x7000_is_refused_by_default(client: TestClient) -> None:
    # 49 MP behind a few bytes: past the default budget (25 MP, docs/operations.md,
    # "Limits and memory"), refused from its header before a byte is decoded.
    assert_error(post(client, png_header_only(7000, 7000)), 413, "image_too_large")


def test_rejects_unsupported_format(client: TestClient) -> None:
    assert_error(post(client, encode_image(subject_image(), "BMP")), 415, "unsupported_format")
    assert_error(post(client, b"hello, I am text"), 415, "unsupported_format")


def test_rejects_truncated_image(client: TestClient) -> None:
    data = encode_image(subject_image((300, 300)), "JPEG")
    assert_error(post(client, data[:600]), 400, "invalid_image")


def test_rejects_request_without_image(client: TestClient) -> None:
    assert_error(client.post("/remove-background", data={"format": "png"}), 400, "missing_image")
    assert_error(client.post("/remove-background"), 400, "missing_image")
    r = client.post("/remove-background", data={"file": "not-a-file"})
    assert_error(r, 400, "missing_image")


def test_rejects_bad_parameters_with_stable_code(client: TestClient, photo_png: bytes) -> None:
    for query in ("format=bmp", "bg_color=nope", "quality=0", "channels=rgb", "crop_margin=1em"):
        r = client.post(f"/remove-background?{query}", files={"file": photo_png})
        assert_error(r, 400, "invalid_parameter")


def test_rejects_model_outside_allow_list(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/remove-background?model=../../etc/passwd", files={"file": photo_png})
    assert_error(r, 400, "model_not_available")


def test_crop_of_an_empty_image_is_422(client: TestClient) -> None:
    dark = encode_image(Image.new("RGB", (50, 50), (5, 5, 5)))
    r = client.post("/remove-background?crop=true", files={"file": dark})
    assert_error(r, 422, "no_foreground")


def test_random_bytes_never_cause_a_server_error(client: TestClient) -> None:
    rng = np.random.default_rng(7)
    valid = encode_image(subject_image((64, 64)), "JPEG")
    samples = [rng.bytes(int(n)) for n in rng.integers(1, 4000, size=15)]
    # Valid headers followed by garbage exercise the decoders, not just the sniffer.
    samples += [valid[:20] + rng.bytes(500), valid[:200] + rng.bytes(2000)]
    for data in samples:
        r = post(client, data)
        assert r.status_code in (400, 415), r.text
        assert "Traceback" not in r.text


class GatedEngine:
    """Wraps a real engine; each predict waits for the gate (and may sleep)."""

    def __init__(self, inner: Predictor, gate: threading.Event, delay: float = 0.0) -> None:
        self.inner, self.gate, self.delay = inner, gate, delay
        self.name = inner.name

    def predict(self, rgb: Image.Image) -> np.ndarray:
        self.gate.wait(10)
        time.sleep(self.delay)
        return self.inner.predict(rgb)


def gated_loader(
    gate: threading.Event, delay: float = 0.0
) -> Callable[[Settings], Mapping[str, Predictor]]:
    def load(settings: Settings) -> Mapping[str, Predictor]:
        return {n: GatedEngine(e, gate, delay) for n, e in load_engines(settings).items()}

    return load


def test_full_queue_gets_429_at_once_with_retry_after(make_client, photo_png: bytes) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    client = make_client(loader=gated_loader(gate), max_concurrency=1, max_queue=1)
    scheduler = client.app.state.bgsvc.scheduler  # type: ignore[attr-defined]
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post, client, photo_png) for _ in range(2)]
        deadline = time.monotonic() + 10
        while scheduler.admitted < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        rejected = post(client, photo_png)
        gate.set()
        results = [f.result() for f in held]
    assert_error(rejected, 429, "overloaded")
    assert int(rejected.headers["retry-after"]) >= 1
    assert [r.status_code for r in results] == [200, 200]
    metrics = client.get("/metrics").text
    assert 'bgsvc_rejections_total{reason="queue_full"} 1.0' in metrics
    # Refused before routing, yet counted on its route.
    assert 'route="/remove-background",status="429"} 1.0' in metrics


def test_slow_request_gets_504_and_worker_keeps_serving(make_client, photo_png: bytes) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    gate.set()
    # The second request below must finish within the same budget: 1 s is 500 times what
    # it takes here, so a busy machine's scheduling delays cannot fail it (0.2 s did once).
    client = make_client(loader=gated_loader(gate, delay=1.5), request_timeout_s=1.0)
    assert_error(post(client, photo_png), 504, "timeout")
    engine = client.app.state.bgsvc.engines["tiny"]  # type: ignore[attr-defined]
    engine.delay = 0.0
    # The abandoned inference holds the only slot until it really ends: a request sent
    # before then would wait for it within its own budget.
    scheduler = client.app.state.bgsvc.scheduler  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while scheduler.admitted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert post(client, photo_png).status_code == 200


def test_ready_is_503_until_model_is_warm(make_client, photo_png: bytes) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()

    def slow_loader(settings: Settings) -> Mapping[str, Predictor]:
        release.wait(10)
        return load_engines(settings)

    client = make_client(loader=slow_loader, wait=False)
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "loading model"
    assert client.get("/health").status_code == 200
    blocked = post(client, photo_png)
    assert_error(blocked, 503, "not_ready")
    assert "retry-after" in blocked.headers
    release.set()
    wait_ready(client)
    assert post(client, photo_png).status_code == 200


def test_failed_model_load_keeps_reporting_not_ready(make_client) -> None:  # type: ignore[no-untyped-def]
    def broken(settings: Settings) -> Mapping[str, Predictor]:
        raise ModelError("Model 'tiny' is missing at /nowhere; run `bgsvc models fetch tiny`.")

    client = make_client(loader=broken, wait=False)
    deadline = time.monotonic() + 5
    while "failed" not in client.get("/ready").json()["status"] and time.monotonic() < deadline:
        time.sleep(0.01)
    r = client.get("/ready")
    assert r.status_code == 503 and "bgsvc models fetch" in r.json()["status"]


def test_an_unexpected_error_while_loading_fails_the_start_instead_of_loading_for_ever(
    make_settings, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    # A dependency missing from the install surfaces as an ImportError at start-up.
    def broken(settings: Settings) -> Mapping[str, Predictor]:
        raise ModuleNotFoundError("No module named 'rembg'")

    failures: list[bool] = []
    app = create_app(
        make_settings(), engine_loader=broken, on_load_failure=lambda: failures.append(True)
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 5
        while not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        r = client.get("/ready")
    assert failures == [True]
    assert r.status_code == 503
    assert r.json()["status"] == "model failed to load: ModuleNotFoundError (see the log)"
    (record,) = [rec for rec in caplog.records if rec.getMessage() == "model load failed"]
    assert record.exc_info is not None and "rembg" in str(record.exc_info[1])


def test_unexpected_error_is_a_generic_500_with_request_id(
    make_client, photo_png: bytes, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    client = make_client(loader=lambda s: {"tiny": Exploding()})
    r = client.post(
        "/remove-background", files={"file": photo_png}, headers={"X-Request-ID": "rid-500"}
    )
    assert r.status_code == 500
    assert r.json() == {
        "code": "internal_error",
        "message": "Internal server error.",
        "request_id": "rid-500",
    }
    assert r.headers["x-request-id"] == "rid-500"
    assert "secret" not in r.text
    assert any("rid-500" in rec.getMessage() for rec in caplog.records)


def test_unknown_route_is_json_404(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def assert_removebg_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body == {
        "errors": [{"title": body["errors"][0]["title"], "code": code}],
        "request_id": response.headers["x-request-id"],
    }
    assert body["errors"][0]["title"]


def test_unknown_route_is_a_native_404_elsewhere(client: TestClient) -> None:
    assert_error(client.get("/nope", headers={"X-Request-ID": "rid-404"}), 404, "not_found")


def test_unknown_route_under_removebg_paths_is_a_removebg_404(client: TestClient) -> None:
    r = client.get("/v1.0/nope", headers={"X-Request-ID": "rid-404"})
    assert_removebg_error(r, 404, "not_found")
    assert r.headers["x-request-id"] == "rid-404"


def test_wrong_method_is_a_native_405_elsewhere(client: TestClient) -> None:
    r = client.put("/remove-background")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


def test_wrong_method_under_removebg_paths_is_a_removebg_405(client: TestClient) -> None:
    r = client.put("/v1.0/removebg")
    assert_removebg_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


class Exploding:
    name = "tiny"

    def predict(self, rgb: Image.Image) -> np.ndarray:
        raise RuntimeError("secret internal detail " + os.sep)


def test_unexpected_error_under_removebg_paths_is_a_removebg_500(
    make_client, photo_png: bytes, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    client = make_client(loader=lambda s: {"tiny": Exploding()})
    r = client.post(
        "/v1.0/removebg", files={"image_file": photo_png}, headers={"X-Request-ID": "rid-500"}
    )
    assert r.status_code == 500
    assert r.json() == {
        "errors": [{"title": "Internal server error.", "code": "internal_error"}],
        "request_id": "rid-500",
    }
    assert r.headers["x-request-id"] == "rid-500"
    assert "secret" not in r.text
    assert any("rid-500" in rec.getMessage() for rec in caplog.records)
