from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from bgsvc.config import Settings


def test_health_and_ready_when_warm(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200


def test_models_lists_the_allow_list(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["default"] == "tiny"
    assert [m["name"] for m in body["models"]] == ["tiny"]


def test_metrics_count_requests_by_route_and_status(client: TestClient, photo_png: bytes) -> None:
    client.post("/remove-background", files={"file": photo_png})
    client.post("/remove-background", files={"file": b"junk"})
    text = client.get("/metrics").text
    assert (
        'bgsvc_http_requests_total{method="POST",route="/remove-background",status="200"} 1.0'
        in text
    )
    assert (
        'bgsvc_http_requests_total{method="POST",route="/remove-background",status="415"} 1.0'
        in text
    )
    assert 'bgsvc_rejections_total{reason="unsupported_format"} 1.0' in text
    assert 'bgsvc_inference_duration_seconds_count{model="tiny"} 1.0' in text
    assert 'bgsvc_model_load_seconds{model="tiny"}' in text
    assert "bgsvc_ready 1.0" in text
    assert 'bgsvc_http_request_duration_seconds_bucket{le="20.0"' in text
    assert "bgsvc_input_megapixels_count 1.0" in text


def test_methods_outside_http_s_usual_ones_share_one_series(client: TestClient) -> None:
    # The parser accepts some forty methods (WebDAV's, RTSP's): each must not be a series
    # of its own for anyone to multiply by routes and statuses.
    for method in ("PROPFIND", "MKCOL", "LOCK", "SUBSCRIBE"):
        client.request(method, "/health")
    client.request("DELETE", "/health")
    text = client.get("/metrics").text
    series = [row for row in text.splitlines() if row.startswith("bgsvc_http_requests_total{")]
    methods = {row.split('method="')[1].split('"')[0] for row in series}
    assert methods == {"GET", "DELETE", "other"}
    assert 'bgsvc_http_requests_total{method="other",route="/health",status="405"} 4.0' in text


def test_metrics_aggregate_across_processes_in_multiprocess_mode(
    make_client, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import values
    from prometheus_client.values import MultiProcessValue

    # prometheus-client picks its value class at import; emulate a gunicorn worker's.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    previous = values.ValueClass
    values.ValueClass = MultiProcessValue(lambda: 4242)
    try:
        client = make_client(prometheus_multiproc_dir=tmp_path)
        client.get("/health")
        text = client.get("/metrics").text
    finally:
        values.ValueClass = previous
    assert any(p.name.endswith("_4242.db") for p in tmp_path.iterdir())
    assert 'bgsvc_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text


def test_openapi_documents_every_remove_parameter(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/remove-background"]["post"]
    params = {p["name"]: p for p in op["parameters"]}
    for name in (
        "format",
        "bg_color",
        "channels",
        "crop",
        "crop_margin",
        "quality",
        "model",
        "alpha_matting",
        "post_process_mask",
    ):
        assert params[name].get("description"), name
    assert "multipart/form-data" in op["requestBody"]["content"]
    assert "/api/remove" in spec["paths"] and "/v1.0/removebg" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_each_built_in_model_states_the_licence_its_weights_come_under() -> None:
    from bgsvc.inference.registry import BUILTIN

    assert BUILTIN["imgly-medium"].license == "AGPL-3.0"
    assert {BUILTIN[n].license for n in ("u2net", "u2netp", "u2net_human_seg")} == {"Apache-2.0"}
    assert {BUILTIN[n].license for n in ("birefnet-general", "birefnet-portrait")} == {"MIT"}
    assert "non-commercial" in BUILTIN["isnet-general-use"].license
    assert "see rembg" not in " ".join(spec.license for spec in BUILTIN.values())


def test_the_start_up_log_names_each_models_licence(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    from bgsvc.inference.loader import load_engines

    with caplog.at_level(logging.INFO, logger="bgsvc.inference.loader"):
        load_engines(make_settings())
    (line,) = [r.getMessage() for r in caplog.records if "loaded model tiny" in r.getMessage()]
    # A custom file's licence is whatever came with it, and the log says so.
    assert "(licence: as supplied)" in line
