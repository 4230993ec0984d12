"""Shared fixtures: a tiny generated ONNX model, settings around it, and a ready client."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc.app import EngineLoader, create_app
from bgsvc.config import Settings
from bgsvc.imaging import edges, temporal
from bgsvc.inference.loader import load_engines
from tests.models import TINY_SIZE, build_tiny_model


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """The service's numba kernels compiled into numba's cache on disk before any test
    starts a service. A fresh checkout has no cache (it is keyed on the source files'
    times): the first compile takes 10-20 s on two cores, and would otherwise land within
    the readiness deadline of whichever service starts first (30 s for an app here), or
    of every node of a cluster started at once."""
    edges.preload()
    temporal.preload()


@pytest.fixture(scope="module", autouse=True)
def module_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same for services a module starts once (module-scoped fixtures are set up
    before any test's own folder, so without this they would fall back to the default
    under the home folder, and leave a job database there for the next one)."""
    path = tmp_path_factory.mktemp("module-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGSVC_DATA_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's service files (job database, results, keys) in a folder of its own, for
    apps in this process and servers it starts alike: the default under the home folder
    outlives the test, and a job database left there sets every later app's runner
    polling, taking inference places the test counts on."""
    path = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("BGSVC_DATA_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture
def make_settings(tiny_model_path: Path, tmp_path: Path) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_dir": tmp_path / "models",
            "default_model": "tiny",
            "custom_models": {
                "tiny": {"path": tiny_model_path, "profile": "imgly", "input_size": TINY_SIZE}
            },
            "intra_op_threads": 1,
            "node_name": "test-node",
            # The engine choice has tests of its own (tests/inference/test_engine_choice.py);
            # timing the tiny model's microsecond forward passes would only add noise here.
            "engine": "onnxruntime",
            # A rehearsal per app would add a 2 MP photo's stages to hundreds of tests; its
            # own tests turn it on.
            "warm_stages": False,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError(f"service not ready: {client.get('/ready').json()}")


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings],
) -> Iterator[Callable[..., TestClient]]:
    """Start an app (lifespan included) and wait until it is ready."""
    opened: list[TestClient] = []

    def factory(
        loader: EngineLoader = load_engines, wait: bool = True, **overrides: Any
    ) -> TestClient:
        app = create_app(
            make_settings(**overrides), engine_loader=loader, on_load_failure=lambda: None
        )
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        if wait:
            wait_ready(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def subject_image(size: tuple[int, int] = (120, 80), mode: str = "RGB") -> Image.Image:
    """A bright disc (the subject) on a dark background."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (min(w, h) / 4) ** 2
    rgb = np.where(disc[..., None], 240, 20).astype(np.uint8).repeat(3, axis=2)
    img = Image.fromarray(rgb, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def encode_image(img: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


@pytest.fixture
def photo_png() -> bytes:
    return encode_image(subject_image())


@pytest.fixture
def photo_jpeg() -> bytes:
    return encode_image(subject_image(), "JPEG", quality=95)
