from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image


def open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_returns_transparent_png_of_the_subject(client: TestClient, photo_jpeg: bytes) -> None:
    r = client.post("/remove-background", files={"file": ("a.jpg", photo_jpeg, "image/jpeg")})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = open_image(r.content)
    assert img.mode == "RGBA" and img.size == (120, 80)
    alpha = np.asarray(img.getchannel("A"))
    assert alpha[40, 60] > 200 and alpha[2, 2] < 30
    assert r.headers["x-width"] == "120" and r.headers["x-height"] == "80"
    assert r.headers["x-model"] == "tiny"
    # Disc of radius 20 centred at (60, 40); the 32x32 tiny model blurs its edge a little.
    left, width = int(r.headers["x-foreground-left"]), int(r.headers["x-foreground-width"])
    assert abs(left - 40) <= 4 and abs(width - 40) <= 8
    assert left + width / 2 == pytest.approx(60, abs=1.5)
    timing = r.headers["server-timing"]
    for stage in ("decode", "inference", "encode"):
        assert f"{stage};dur=" in timing


def test_accepts_image_file_field_and_raw_body(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/remove-background", files={"image_file": ("a.png", photo_png, "image/png")})
    assert r.status_code == 200
    raw = client.post(
        "/remove-background", content=photo_png, headers={"content-type": "image/png"}
    )
    assert raw.status_code == 200
    assert raw.content == r.content


def test_options_as_query_or_form_fields_agree(client: TestClient, photo_png: bytes) -> None:
    files = {"file": ("a.png", photo_png, "image/png")}
    q = client.post("/remove-background?format=jpg&bg_color=%2300ff00", files=files)
    f = client.post(
        "/remove-background", files=files, data={"format": "jpg", "bg_color": "#00ff00"}
    )
    assert q.status_code == f.status_code == 200
    assert q.headers["content-type"] == f.headers["content-type"] == "image/jpeg"
    corner = open_image(f.content).getpixel((1, 1))
    assert isinstance(corner, tuple) and corner[1] > 200 and corner[0] < 50


def test_webp_output_keeps_alpha(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/remove-background?format=webp&quality=80", files={"file": photo_png})
    assert r.headers["content-type"] == "image/webp"
    assert open_image(r.content).mode == "RGBA"


def test_alpha_channel_returns_greyscale_matte(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/remove-background?channels=alpha", files={"file": photo_png})
    img = open_image(r.content)
    assert img.mode == "L" and img.size == (120, 80)


def test_crop_with_margin_returns_subject_box(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/remove-background?crop=true&crop_margin=10px", files={"file": photo_png})
    assert r.status_code == 200
    img = open_image(r.content)
    assert img.size == (int(r.headers["x-width"]), int(r.headers["x-height"]))
    assert r.headers["x-foreground-left"] == "10" and r.headers["x-foreground-top"] == "10"
    assert img.width == int(r.headers["x-foreground-width"]) + 20


def test_result_keeps_the_source_size_beyond_max_edge(make_client, photo_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_edge=64)
    r = client.post("/remove-background", files={"file": photo_png})
    assert (r.headers["x-width"], r.headers["x-height"]) == ("120", "80")
    assert (r.headers["x-source-width"], r.headers["x-source-height"]) == ("120", "80")
    assert open_image(r.content).size == (120, 80)


def test_output_pixel_budget_scales_the_result_down(make_client, photo_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_output_pixels=2400)
    r = client.post("/remove-background", files={"file": photo_png})
    assert open_image(r.content).size == (60, 40)
    assert (r.headers["x-source-width"], r.headers["x-source-height"]) == ("120", "80")
    # A request may ask for less than the service's budget, never for more.
    smaller = client.post("/remove-background?size=600", files={"file": photo_png})
    assert open_image(smaller.content).size == (30, 20)
    larger = client.post("/remove-background?size=full", files={"file": photo_png})
    assert open_image(larger.content).size == (60, 40)


@pytest.mark.parametrize("size", ["huge", "-5", "0", "1e6", "9" * 40])
def test_unknown_size_is_refused(client: TestClient, photo_png: bytes, size: str) -> None:
    r = client.post(f"/remove-background?size={size}", files={"file": photo_png})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_parameter"


def test_echoes_caller_request_id_and_names_the_node(client: TestClient, photo_png: bytes) -> None:
    r = client.post(
        "/remove-background", files={"file": photo_png}, headers={"X-Request-ID": "abc-123"}
    )
    assert r.headers["x-request-id"] == "abc-123"
    assert r.headers["x-served-by"] == "test-node"
    made = client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["x-request-id"] != "bad id with spaces"
    assert len(made.headers["x-request-id"]) == 32


@pytest.mark.parametrize("alpha_quality", [100, 20])
def test_webp_alpha_is_the_matte_exactly_unless_alpha_quality_is_lowered(
    make_client: Callable[..., TestClient], photo_png: bytes, alpha_quality: int
) -> None:
    client = make_client(webp_alpha_quality=alpha_quality, result_cache_bytes=0)
    matte = client.post("/remove-background?channels=alpha", files={"file": photo_png})
    webp = client.post("/remove-background?format=webp", files={"file": photo_png})
    assert webp.headers["content-type"] == "image/webp"
    want = np.asarray(open_image(matte.content)).astype(int)
    got = np.asarray(open_image(webp.content).getchannel("A")).astype(int)
    assert (np.abs(got - want).max() == 0) == (alpha_quality == 100)


def test_service_defaults_for_the_edge_step_are_what_a_request_may_override(  # type: ignore[no-untyped-def]
    make_client, photo_png: bytes
) -> None:
    plain = make_client(refine=False, decontaminate=False)
    full = make_client()
    asked_plain = full.post(
        "/remove-background?refine=false&decontaminate=false", files={"file": photo_png}
    )
    default_plain = plain.post("/remove-background", files={"file": photo_png})
    asked_full = plain.post(
        "/remove-background?refine=true&decontaminate=true", files={"file": photo_png}
    )
    default_full = full.post("/remove-background", files={"file": photo_png})
    pixels = [np.asarray(open_image(r.content)) for r in (asked_plain, default_plain)]
    assert np.array_equal(*pixels)
    pixels = [np.asarray(open_image(r.content)) for r in (asked_full, default_full)]
    assert np.array_equal(*pixels)
    # The edge step changes the result: the photo's soft edge is not what bilinear gives.
    assert not np.array_equal(
        np.asarray(open_image(default_plain.content)), np.asarray(open_image(default_full.content))
    )


@pytest.mark.parametrize(
    ("step", "provider", "graphs_on"),
    [
        ("auto", "CPUExecutionProvider", None),
        ("auto", "CUDAExecutionProvider", True),
        ("auto", "TensorrtExecutionProvider", True),
        ("cpu", "CUDAExecutionProvider", None),
        ("graph", "CPUExecutionProvider", False),
    ],
)
def test_the_edge_step_runs_as_graphs_by_default_only_where_the_model_runs_on_a_gpu(
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    provider: str,
    graphs_on: bool | None,
) -> None:
    import sys

    from bgsvc import app as app_module
    from bgsvc.state import AppState
    from tests.test_gpu_metrics import FakeNvml, on_provider

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    built: list[bool] = []
    device_graphs = object()

    def edge_graphs(settings: object, on_gpu: bool, on_fallback: object) -> object:
        built.append(on_gpu)
        return device_graphs

    monkeypatch.setattr(app_module, "_edge_graphs", edge_graphs)
    client = make_client(loader=on_provider(provider), edge_step=step)
    state: AppState = client.app.state.bgsvc  # type: ignore[attr-defined]
    if graphs_on is None:
        assert built == []
        assert state.remover.edge_step is not device_graphs
    else:
        assert built == [graphs_on]
        assert state.remover.edge_step is device_graphs


def test_graphs_that_did_not_get_the_gpu_leave_the_edge_step_on_the_kernels(
    make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ORT moves a session to its CPU provider by itself when CUDA cannot start for it;
    # there the graphs are slower than the kernels.
    from bgsvc import app as app_module
    from bgsvc.inference import edge_graph

    got: list[str] = []

    class Graphs:
        """Sessions that ended up on ``got``, whatever was asked."""

        def __init__(self, *args: object) -> None:
            self.providers = list(got)

    monkeypatch.setattr(edge_graph, "EdgeGraphs", Graphs)
    settings = make_settings()
    for providers, on_gpu, kept in (
        (["CPUExecutionProvider"], True, False),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], True, True),
        (["CPUExecutionProvider"], False, True),  # graph asked for on a CPU host
    ):
        got[:] = providers
        built = app_module._edge_graphs(settings, on_gpu, lambda: None)
        assert (built is not None) == kept, (providers, on_gpu)


def test_the_edge_step_run_as_onnx_graphs_serves_what_the_cpu_kernels_do(
    make_client: Callable[..., TestClient],
) -> None:
    # BGSVC_EDGE_STEP=graph is meant for a GPU; on ORT's CPU provider here, it must give
    # the same cutout, soft edges and estimated colour included, within a level.
    from bgsvc.inference.edge_graph import EdgeGraphs
    from bgsvc.state import AppState

    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    subject = np.clip((150 - np.hypot(xx - w / 2, yy - h / 2)) / 20, 0, 1)[..., None]
    photo = subject * np.array([230, 120, 60]) + (1 - subject) * np.array([30, 200, 40])
    buf = io.BytesIO()
    Image.fromarray(photo.astype(np.uint8)).save(buf, "PNG")
    body = buf.getvalue()

    cutouts = {}
    for step in ("cpu", "graph"):
        client = make_client(edge_step=step)
        state: AppState = client.app.state.bgsvc  # type: ignore[attr-defined]
        assert isinstance(state.remover.edge_step, EdgeGraphs) == (step == "graph")
        response = client.post("/remove-background", files={"file": body})
        assert response.status_code == 200, response.text
        cutouts[step] = np.asarray(open_image(response.content)).astype(int)
    diff = np.abs(cutouts["graph"] - cutouts["cpu"])
    assert diff.max() <= 2
    assert np.mean(diff <= 1) >= 0.999
    # Soft pixels were there to refine and recolour.
    alpha = cutouts["cpu"][..., 3]
    assert np.count_nonzero((alpha > 10) & (alpha < 245)) > 1000
