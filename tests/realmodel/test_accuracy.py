"""The service's matte against an independent implementation of the model author's recipe."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
from fastapi.testclient import TestClient
from PIL import Image
from skimage.transform import resize

from bgsvc.app import create_app
from bgsvc.config import Settings
from bgsvc.inference.registry import BUILTIN
from tests.conftest import encode_image, wait_ready

pytestmark = pytest.mark.real_model

PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def settings() -> Settings:
    settings = Settings(intra_op_threads=2, node_name="real")
    path = BUILTIN[settings.default_model].file_in(settings.model_dir)
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make model` (make test does it first)")
    return settings


@pytest.fixture(scope="module")
def real_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=120)
        yield client


@pytest.fixture(scope="module")
def reference_session(settings: Settings) -> ort.InferenceSession:
    path = BUILTIN[settings.default_model].file_in(settings.model_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def reference_matte(rgb: np.ndarray, session: ort.InferenceSession) -> np.ndarray:
    """Bilinear resize to 1024, (pixel - 128) / 256, NCHW; output resized back; in [0, 1]."""
    h, w = rgb.shape[:2]
    x = resize(
        rgb.astype(np.float32), (1024, 1024), order=1, anti_aliasing=False, preserve_range=True
    )
    x = ((x - 128.0) / 256.0).transpose(2, 0, 1)[None].astype(np.float32)
    out = session.run(["output"], {"input": x})[0][0, 0]
    return np.clip(resize(out, (h, w), order=1, anti_aliasing=False), 0.0, 1.0)


def test_service_matte_agrees_with_model_authors_preprocessing(
    real_client: TestClient, reference_session: ort.InferenceSession
) -> None:
    ious, maes = [], []
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        body = encode_image(Image.fromarray(rgb), "PNG")
        r = real_client.post("/remove-background?channels=alpha", files={"file": body})
        assert r.status_code == 200, r.text
        ours = np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.float32) / 255.0
        ref = reference_matte(rgb, reference_session)
        assert ours.shape == ref.shape
        a, b = ours > 0.5, ref > 0.5
        ious.append((a & b).sum() / max(1, (a | b).sum()))
        maes.append(float(np.abs(ours - ref).mean()))
        # A real subject was found, not an empty or full matte.
        assert 0.05 < a.mean() < 0.95, name
    print(f"IoU {ious} MAE*255 {[m * 255 for m in maes]}")
    assert float(np.mean(ious)) >= 0.98
    assert float(np.mean(maes)) <= 3 / 255


def test_real_cutout_is_transparent_around_the_astronaut(real_client: TestClient) -> None:
    body = encode_image(Image.fromarray(skimage.data.astronaut()), "JPEG", quality=92)
    r = real_client.post(
        "/remove-background", files={"file": ("astronaut.jpg", body, "image/jpeg")}
    )
    assert r.status_code == 200
    img = Image.open(io.BytesIO(r.content))
    alpha = np.asarray(img.getchannel("A"))
    assert img.size == (512, 512)
    assert alpha[256, 200] > 240  # the suit
    assert alpha[10, 500] < 10  # the background top right
    assert r.headers["x-model"] == "imgly-medium"
