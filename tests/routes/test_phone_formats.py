from __future__ import annotations

import io
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


def test_avif_upload_is_refused_unless_allowed(client: TestClient) -> None:
    body = encode_image(subject_image(), "AVIF")
    r = client.post("/remove-background", content=body, headers={"Content-Type": "image/avif"})
    assert r.status_code == 415 and "HEIF" in r.json()["message"]
