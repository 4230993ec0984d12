from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import encode_image, subject_image

HEIC = Path(__file__).parent.parent / "fixtures" / "heif" / "photo.heic"


def test_heic_upload_comes_back_as_a_png_cutout_on_every_api(client: TestClient) -> None:
    data = HEIC.read_bytes()
    for path, field in (
        ("/remove-background", "file"),
        ("/api/remove", "file"),
        ("/v1.0/removebg", "image_file"),
    ):
        r = client.post(path, files={field: ("IMG_0001.HEIC", data, "image/heic")})
        assert r.status_code == 200, (path, r.text)
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (120, 80) and out.mode == "RGBA", path


def test_avif_upload_comes_back_as_a_png_cutout_on_every_api(client: TestClient) -> None:
    data = encode_image(subject_image(), "AVIF")
    for path, field in (
        ("/remove-background", "file"),
        ("/api/remove", "file"),
        ("/v1.0/removebg", "image_file"),
    ):
        r = client.post(path, files={field: ("photo.avif", data, "image/avif")})
        assert r.status_code == 200, (path, r.text)
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (120, 80) and out.mode == "RGBA", path


def test_an_avif_whose_frame_outgrows_its_header_is_a_400_in_each_dialect(
    client: TestClient,
) -> None:
    data = encode_image(subject_image((1200, 800)), "AVIF")
    at = data.index(b"ispe")
    lying = data[: at + 8] + struct.pack(">II", 120, 80) + data[at + 16 :]
    r = client.post("/remove-background", content=lying, headers={"Content-Type": "image/avif"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_image"
    r = client.post("/v1.0/removebg", files={"image_file": ("a.avif", lying, "image/avif")})
    assert r.status_code == 400 and "1200x800" in r.json()["errors"][0]["title"]


def test_avif_upload_is_refused_when_turned_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(allowed_formats=["JPEG", "PNG"])
    body = encode_image(subject_image(), "AVIF")
    r = client.post("/remove-background", content=body, headers={"Content-Type": "image/avif"})
    assert r.status_code == 415 and "PNG" in r.json()["message"]
