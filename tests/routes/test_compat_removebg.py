from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import encode_image, subject_image


def open_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_removebg_multipart_with_its_field_names(client: TestClient, photo_png: bytes) -> None:
    r = client.post(
        "/v1.0/removebg",
        files={"image_file": ("a.png", photo_png, "image/png")},
        data={"size": "auto", "format": "png", "bg_color": "81d4fa"},
        headers={"X-Api-Key": "ignored"},
    )
    assert r.status_code == 200
    assert r.headers["x-width"] == "120" and r.headers["x-height"] == "80"
    img = Image.open(io.BytesIO(r.content))
    pixel = img.convert("RGB").getpixel((0, 0))
    assert isinstance(pixel, tuple)
    assert all(abs(a - b) <= 8 for a, b in zip(pixel, (0x81, 0xD4, 0xFA), strict=True))


def test_removebg_json_body_with_base64_and_json_answer(
    client: TestClient, photo_png: bytes
) -> None:
    payload = {
        "image_file_b64": base64.b64encode(photo_png).decode(),
        "crop": True,
        "format": "png",
    }
    r = client.post("/v1.0/removebg", json=payload, headers={"Accept": "application/json"})
    assert r.status_code == 200
    data = r.json()["data"]
    img = Image.open(io.BytesIO(base64.b64decode(data["result_b64"])))
    assert img.size == (data["foreground_width"], data["foreground_height"])
    assert data["foreground_top"] == 0 and data["foreground_left"] == 0


def test_removebg_size_preview_caps_pixels(client: TestClient) -> None:
    big = encode_image(subject_image((1000, 800)))
    r = client.post("/v1.0/removebg", files={"image_file": big}, data={"size": "preview"})
    w, h = int(r.headers["x-width"]), int(r.headers["x-height"])
    assert w * h <= 250_000 and w * h > 240_000
    assert abs(w / h - 1000 / 800) < 0.01


@pytest.mark.parametrize(
    ("size", "budget"),
    [("small", 250_000), ("medium", 1_500_000), ("hd", 4_000_000), ("full", None), ("4k", None)],
)
def test_removebg_sizes_cap_the_result_at_their_pixel_counts(
    client: TestClient, size: str, budget: int | None
) -> None:
    photo = encode_image(subject_image((2400, 1800)), "JPEG")
    r = client.post("/v1.0/removebg", files={"image_file": photo}, data={"size": size})
    w, h = int(r.headers["x-width"]), int(r.headers["x-height"])
    if budget is None:
        assert (w, h) == (2400, 1800)
    else:
        assert budget * 0.99 < w * h <= budget


def test_removebg_refuses_a_size_it_does_not_define(client: TestClient, photo_png: bytes) -> None:
    for size in ("1000000", "huge"):
        r = client.post("/v1.0/removebg", files={"image_file": photo_png}, data={"size": size})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "invalid_parameter"


def test_removebg_semitransparency_false_keeps_the_photos_edge_colour(
    client: TestClient,
) -> None:
    photo = encode_image(subject_image((240, 160)))
    kept = client.post(
        "/v1.0/removebg",
        files={"image_file": photo},
        data={"semitransparency": "false", "format": "png"},
    )
    own = client.post("/remove-background?decontaminate=false", files={"file": photo})
    assert kept.status_code == 200
    assert np.array_equal(np.asarray(open_image(kept.content)), np.asarray(open_image(own.content)))


def test_removebg_auto_format_is_jpg_when_opaque(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/v1.0/removebg", files={"image_file": photo_png}, data={"bg_color": "white"})
    assert r.headers["content-type"] == "image/jpeg"


def test_removebg_errors_use_its_error_body(client: TestClient) -> None:
    r = client.post("/v1.0/removebg", data={"size": "auto"})
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert errors[0]["code"] == "missing_image" and errors[0]["title"]
    bad = client.post("/v1.0/removebg", files={"image_file": b"not an image"})
    assert bad.status_code == 415 and bad.json()["errors"][0]["code"] == "unsupported_format"


def test_removebg_unsupported_fields_are_refused(client: TestClient, photo_png: bytes) -> None:
    r = client.post("/v1.0/removebg", data={"image_url": "http://127.0.0.1/x.jpg"})
    assert r.status_code == 400 and "image_url" in r.json()["errors"][0]["title"]
    bg = client.post(
        "/v1.0/removebg",
        files={"image_file": photo_png},
        data={"bg_image_url": "http://127.0.0.1/bg.jpg"},
    )
    assert bg.status_code == 400 and "bg_image_url" in bg.json()["errors"][0]["title"]


def test_removebg_background_image_file_covers_the_canvas_behind_the_subject(
    client: TestClient, photo_png: bytes
) -> None:
    import numpy as np

    # A wide green background (3:1 against the photo's 3:2): scaled to cover, centred.
    bg = encode_image(Image.new("RGB", (300, 100), (20, 200, 40)))
    r = client.post(
        "/v1.0/removebg",
        files={"image_file": photo_png, "bg_image_file": ("bg.png", bg, "image/png")},
        data={"format": "png"},
    )
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    assert out.shape == (80, 120, 3)
    cutout = client.post("/v1.0/removebg", files={"image_file": photo_png}, data={"format": "png"})
    alpha = np.asarray(Image.open(io.BytesIO(cutout.content)))[..., 3]
    assert (np.abs(out[alpha == 0] - (20, 200, 40)).max(axis=1) <= 2).all()
    opaque = alpha == 255
    if opaque.any():
        source = np.asarray(Image.open(io.BytesIO(photo_png)).convert("RGB")).astype(int)
        assert np.abs(out[opaque] - source[opaque]).max() <= 2
    auto = client.post(
        "/v1.0/removebg",
        files={"image_file": photo_png, "bg_image_file": ("bg.png", bg, "image/png")},
    )
    assert auto.headers["content-type"] == "image/jpeg"


def test_a_background_decoded_only_whole_is_held_to_a_4k_picture_behind_a_small_result(
    client: TestClient, photo_png: bytes
) -> None:
    # A PNG or WebP background is decoded whole, whatever part of it is used: behind a
    # 120 x 80 result, at most a 4K picture's pixels (or four times the result's).
    def with_background(size: tuple[int, int], fmt: str) -> Any:
        bg = encode_image(Image.new("RGB", size, (20, 200, 40)), fmt)
        files = {"image_file": photo_png, "bg_image_file": ("bg", bg)}
        return client.post("/v1.0/removebg", files=files, data={"format": "png"})

    refused = with_background((3000, 3000), "PNG")
    assert refused.status_code == 413, refused.text
    assert "background" in refused.json()["errors"][0]["title"]
    # Within a 4K picture; and a JPEG is decoded at about the size it is used at.
    assert with_background((3840, 2160), "PNG").status_code == 200
    assert with_background((3000, 3000), "JPEG").status_code == 200


def test_a_crop_with_margins_stays_within_the_size_asked(
    client: TestClient,
) -> None:
    # size=preview promises at most 0.25 MP; 500 px margins around the subject of a photo
    # decoded at that size made 9 times as much.
    photo = encode_image(subject_image((1200, 900)), "JPEG")
    data = {"size": "preview", "crop": "true", "crop_margin": "500px", "format": "png"}
    r = client.post("/v1.0/removebg", files={"image_file": photo}, data=data)
    assert r.status_code == 200, r.text
    w, h = Image.open(io.BytesIO(r.content)).size
    bare = client.post(
        "/v1.0/removebg", files={"image_file": photo}, data={**data, "crop_margin": "0px"}
    )
    bw, bh = Image.open(io.BytesIO(bare.content)).size
    # Scaled whole: the subject's box and its 500 px margins keep their proportions.
    assert w * h <= 250_000 and abs(w / h - (bw + 1000) / (bh + 1000)) < 0.02


def test_removebg_background_image_conflicts_and_bad_bytes_are_refused(
    client: TestClient, photo_png: bytes
) -> None:
    bg = ("bg.png", encode_image(Image.new("RGB", (30, 20), "red")), "image/png")
    for data in ({"bg_color": "white"}, {"format": "zip"}, {"channels": "alpha"}):
        r = client.post(
            "/v1.0/removebg", files={"image_file": photo_png, "bg_image_file": bg}, data=data
        )
        assert r.status_code == 400, data
    junk = client.post(
        "/v1.0/removebg",
        files={"image_file": photo_png, "bg_image_file": ("bg.png", b"not an image", "image/png")},
    )
    assert junk.status_code == 415 and "background" in junk.json()["errors"][0]["title"]
    twice = client.post(
        "/v1.0/removebg",
        files=[("image_file", ("a.png", photo_png)), ("bg_image_file", bg), ("bg_image_file", bg)],
    )
    assert twice.status_code == 400 and "more than once" in twice.json()["errors"][0]["title"]
    off = client.post(
        "/v1.0/removebg",
        files={"image_file": photo_png},
        data={"bg_image_url": "http://127.0.0.1/bg.jpg"},
    )
    assert off.status_code == 400 and "bg_image_url" in off.json()["errors"][0]["title"]


def test_removebg_zip_is_its_color_jpg_and_alpha_png_of_the_same_size(
    client: TestClient, photo_png: bytes
) -> None:
    import zipfile

    import numpy as np

    z = client.post("/v1.0/removebg", files={"image_file": photo_png}, data={"format": "zip"})
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(z.content))
    assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
    color = Image.open(io.BytesIO(archive.read("color.jpg")))
    alpha = Image.open(io.BytesIO(archive.read("alpha.png")))
    assert color.format == "JPEG" and color.mode == "RGB" and alpha.mode == "L"
    assert color.size == alpha.size == (int(z.headers["x-width"]), int(z.headers["x-height"]))
    # Composed as remove.bg's own zip2png does, it is the PNG cutout's matte and subject.
    png = client.post("/v1.0/removebg", files={"image_file": photo_png}, data={"format": "png"})
    cutout = np.asarray(Image.open(io.BytesIO(png.content)))
    np.testing.assert_array_equal(np.asarray(alpha), cutout[..., 3])
    subject = cutout[..., 3] > 0
    assert subject.any()
    diff = np.abs(np.asarray(color).astype(int) - cutout[..., :3])[subject]
    assert diff.mean() <= 3


def test_removebg_zip_with_crop_keeps_both_files_cropped(
    client: TestClient, photo_png: bytes
) -> None:
    import zipfile

    z = client.post(
        "/v1.0/removebg", files={"image_file": photo_png}, data={"format": "zip", "crop": "true"}
    )
    archive = zipfile.ZipFile(io.BytesIO(z.content))
    sizes = {Image.open(io.BytesIO(archive.read(n))).size for n in archive.namelist()}
    assert sizes == {(int(z.headers["x-width"]), int(z.headers["x-height"]))}
    assert z.headers["x-width"] != "120"


def test_removebg_zip_with_a_background_colour_is_refused(
    client: TestClient, photo_png: bytes
) -> None:
    r = client.post(
        "/v1.0/removebg",
        files={"image_file": photo_png},
        data={"format": "zip", "bg_color": "white"},
    )
    assert r.status_code == 400 and "zip" in r.json()["errors"][0]["title"]


def alpha_of(body: bytes) -> np.ndarray:
    import numpy as np

    return np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))[..., 3]


def test_removebg_roi_in_percent_clears_everything_outside_it(
    client: TestClient, photo_png: bytes
) -> None:
    whole = alpha_of(
        client.post(
            "/v1.0/removebg", files={"image_file": photo_png}, data={"format": "png"}
        ).content
    )
    r = client.post(
        "/v1.0/removebg",
        files={"image_file": photo_png},
        data={"format": "png", "roi": "0% 0% 50% 100%"},
    )
    assert r.status_code == 200
    left = alpha_of(r.content)
    assert left[:, 60:].max() == 0
    assert (left[:, :60] == whole[:, :60]).all() and left[:, :60].max() > 0
    assert int(r.headers["x-foreground-left"]) + int(r.headers["x-foreground-width"]) <= 60


def test_removebg_roi_in_pixels_refers_to_the_upload_not_the_smaller_result(
    client: TestClient,
) -> None:
    big = encode_image(subject_image((1000, 800)))
    r = client.post(
        "/v1.0/removebg",
        files={"image_file": big},
        data={"format": "png", "size": "preview", "roi": "0px 0px 500px 800px"},
    )
    assert r.status_code == 200
    alpha = alpha_of(r.content)
    half = alpha.shape[1] // 2
    assert alpha[:, half + 1 :].max() == 0 and alpha[:, : half - 1].max() > 0


def test_removebg_bad_roi_is_refused(client: TestClient, photo_png: bytes) -> None:
    huge = "9" * 400
    r = client.post(
        "/v1.0/removebg",
        files={"image_file": photo_png},
        data={"roi": f"0px 0px {huge}px {huge}%", "format": "png"},
    )
    assert r.status_code == 200  # beyond the photo: clamped to its edge
    for roi in ("0 0 100", "10% 0% 5% 100%", "a b c d", "0px 0px -5px 10px", "50% 0 10 100%"):
        r = client.post("/v1.0/removebg", files={"image_file": photo_png}, data={"roi": roi})
        assert r.status_code == 400 and "roi" in r.json()["errors"][0]["title"], roi


def test_removebg_scale_and_position_move_the_subject_on_the_same_canvas(
    client: TestClient,
) -> None:
    body = encode_image(subject_image((200, 100)))
    r = client.post(
        "/v1.0/removebg",
        files={"image_file": body},
        data={"format": "png", "scale": "30%", "position": "0% 0%"},
    )
    assert r.status_code == 200
    assert (r.headers["x-width"], r.headers["x-height"]) == ("200", "100")
    alpha = alpha_of(r.content)
    # The disc's box is about 50x50; at 30% of the 100 px tall canvas it is ~30 px, in
    # the top left corner.
    top, left = int(r.headers["x-foreground-top"]), int(r.headers["x-foreground-left"])
    assert top <= 2 and left <= 2
    assert 26 <= int(r.headers["x-foreground-height"]) <= 34
    assert alpha[60:, :].max() == 0 and alpha[:, 60:].max() == 0


def test_native_zip_honours_quality_for_its_colour(client: TestClient) -> None:
    import zipfile

    body = encode_image(subject_image((300, 200)))
    sizes = []
    for quality in ("10", "95"):
        z = client.post(
            "/remove-background",
            files={"file": body},
            params={"format": "zip", "quality": quality},
        )
        assert z.status_code == 200
        sizes.append(len(zipfile.ZipFile(io.BytesIO(z.content)).read("color.jpg")))
    assert sizes[0] < sizes[1]


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested past the parser's depth
        b'{"size": ' + b"9" * 5_000 + b"}",  # past Python's digits for an int
        b'{"size": "\xff"}',  # not UTF-8
    ],
    ids=["deep", "digits", "bytes"],
)
def test_a_json_body_that_cannot_be_parsed_is_a_400_not_a_server_error(
    client: TestClient, body: bytes
) -> None:
    r = client.post("/v1.0/removebg", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["code"] == "invalid_parameter"


@pytest.mark.parametrize("field", ["roi", "crop_margin", "format", "bg_color", "position"])
def test_an_option_of_megabytes_is_refused_unparsed_and_not_echoed_back(
    client: TestClient, photo_png: bytes, field: str
) -> None:
    # 25 MB of "1 " as roi blocked the event loop for 31 s and took 3 GB; a bad value of
    # any size came back whole in the error message.
    payload = {"image_file_b64": base64.b64encode(photo_png).decode(), field: "1 " * 500_000}
    r = client.post("/v1.0/removebg", json=payload)
    assert r.status_code == 400, r.text[:300]
    assert len(r.content) < 1_000
    assert field in r.json()["errors"][0]["title"]
