"""The pipeline runs a real engine's stages apart, and reports each in Server-Timing."""

from __future__ import annotations

from benchmarks.stats import parse_server_timing
from fastapi.testclient import TestClient


def test_staged_engine_reports_preprocess_inference_and_mask(
    client: TestClient, photo_jpeg: bytes
) -> None:
    response = client.post("/remove-background", files={"file": ("a.jpg", photo_jpeg)})
    assert response.status_code == 200
    stages = parse_server_timing(response.headers["Server-Timing"])
    expected = {"decode", "preprocess", "queue", "inference", "mask", "postprocess", "encode"}
    assert expected <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values())
