from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image


def test_rembg_clients_get_a_png_cutout(client: TestClient, photo_jpeg: bytes) -> None:
    r = client.post("/api/remove", files={"file": ("a.jpg", photo_jpeg, "image/jpeg")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).mode == "RGBA"


def test_rembg_only_mask_and_background_colour(client: TestClient, photo_png: bytes) -> None:
    mask = client.post("/api/remove", files={"file": photo_png}, data={"om": "true"})
    assert Image.open(io.BytesIO(mask.content)).mode == "L"
    coloured = client.post("/api/remove?bgc=255,0,0,255", files={"file": photo_png})
    img = Image.open(io.BytesIO(coloured.content))
    # The background's matte is near zero, not exactly zero: allow a small blend.
    r, g, b = np.asarray(img.convert("RGB"))[1, 1].tolist()
    assert r > 240 and g < 10 and b < 10


def test_rembg_post_process_mask_is_binary(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/api/remove", files={"file": photo_png}, data={"ppm": "true", "om": "true"})
    assert r.status_code == 200
    values = set(np.unique(np.asarray(Image.open(io.BytesIO(r.content)))).tolist())
    assert values <= {0, 255}


def test_rembg_alpha_matting_runs(client: TestClient, photo_png: bytes) -> None:
    r = client.post(
        "/api/remove",
        files={"file": photo_png},
        data={"a": "true", "af": "200", "ab": "20", "ae": "3"},
    )
    assert r.status_code == 200
    alpha = np.asarray(Image.open(io.BytesIO(r.content)).getchannel("A"))
    assert alpha[40, 60] > 200 and alpha[2, 2] < 30


def test_rembg_model_outside_allow_list_is_refused(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/api/remove", files={"file": photo_png}, data={"model": "u2net"})
    assert r.status_code == 400 and r.json()["code"] == "model_not_available"


def test_rembg_url_fetching_is_refused(client: TestClient) -> None:
    r = client.get("/api/remove?url=http://127.0.0.1/x.png")
    assert r.status_code == 400 and r.json()["code"] == "invalid_parameter"


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_rembg_dc_turns_decontamination_on_and_its_default_leaves_it_off(
    client: TestClient, photo_png: bytes
) -> None:
    plain = client.post("/api/remove", files={"file": photo_png})
    dc = client.post("/api/remove", files={"file": photo_png}, data={"dc": "true"})
    native_off = client.post("/remove-background?decontaminate=false", files={"file": photo_png})
    native_on = client.post("/remove-background", files={"file": photo_png})
    assert dc.status_code == plain.status_code == 200
    assert np.array_equal(_pixels(plain.content), _pixels(native_off.content))
    assert np.array_equal(_pixels(dc.content), _pixels(native_on.content))


def test_rembg_vitmatte_is_refused_by_name(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/api/remove", files={"file": photo_png}, data={"vm": "true"})
    assert r.status_code == 400 and "vm" in r.json()["message"]
