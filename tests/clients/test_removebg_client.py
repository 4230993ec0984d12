"""remove.bg's own Node.js client (the ``remove.bg`` npm package, pinned in
tests/clients/removebg) against a real service on loopback: every field it sends, its
three ways of giving the image (file, URL, base64), and its error path.

The client has api.remove.bg built in; ``redirect.js`` (loaded with ``node -r``) points its
HTTP library at the local service instead, without changing the client's code. It always
asks for JSON (``Accept: application/json``) and reads ``data.result_b64`` and the
``X-Width``/``X-Height``/``X-Credits-Charged`` headers.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from PIL import Image

from bgsvc.app import create_app
from bgsvc.config import Settings
from tests.conftest import subject_image
from tests.models import TINY_SIZE

CLIENT = Path(__file__).parent / "removebg"
NODE = shutil.which("node")
pytestmark = pytest.mark.clients

W, H = 240, 160
GREEN = (20, 200, 40)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def installed() -> Path:
    if NODE is None or not (CLIENT / "node_modules" / "remove.bg").is_dir():
        message = "remove.bg's client is not installed (make clients)"
        # On CI a missing client is a broken setup, not a reason to skip.
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CLIENT


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The photo and a background image on a local static server: (folder, base URL)."""
    folder = tmp_path_factory.mktemp("removebg-files")
    subject_image((W, H)).save(folder / "photo.jpg", quality=95)
    Image.new("RGB", (90, 60), GREEN).save(folder / "green.png")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def service(
    files: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path
) -> Iterator[str]:
    """The service over TCP, the way remove.bg's client reaches it: its base URL."""
    work = tmp_path_factory.mktemp("removebg-service")
    _, files_url = files
    port = _free_port()
    settings = Settings(
        model_dir=work / "models",
        data_dir=work / "data",
        default_model="tiny",
        custom_models={
            "tiny": {"path": tiny_model_path, "profile": "imgly", "input_size": TINY_SIZE}
        },
        intra_op_threads=1,
        url_inputs=True,
        outbound_allow=files_url.removeprefix("http://"),
    )
    app = create_app(settings, on_load_failure=lambda: None)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline and thread.is_alive(), "service did not start"
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def call(installed: Path, service: str) -> Callable[..., list[dict[str, Any]]]:
    """Run remove.bg's client on each (function, options) case; its outcomes."""

    def run(*cases: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
        argv = json.dumps([{"fn": fn, "options": {"apiKey": "-", **o}} for fn, o in cases])
        done = subprocess.run(
            [str(NODE), "-r", "./redirect.js", "drive.js", argv],
            cwd=installed,
            env={**os.environ, "REMOVEBG_ENDPOINT": service},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outcomes: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
        return outcomes

    return run


def picture(outcome: dict[str, Any]) -> Image.Image:
    assert outcome["ok"], outcome
    img = Image.open(io.BytesIO(base64.b64decode(outcome["base64img"])))
    assert (int(outcome["width"]), int(outcome["height"])) == img.size
    return img


def alpha(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGBA"
    return np.asarray(img)[..., 3]


def test_a_file_comes_back_as_a_full_size_cutout(call: Callable[..., Any], files: Any) -> None:
    folder, _ = files
    options = {"path": str(folder / "photo.jpg"), "size": "full"}
    (out,) = call(("removeBackgroundFromImageFile", options))
    img = picture(out)
    assert img.size == (W, H) and img.format == "PNG"
    a = alpha(img)
    # The disc is the subject (the tiny model keeps bright pixels), the corners are not.
    assert a[H // 2, W // 2] > 200 and a[2, 2] < 30


def test_scale_and_position_shrink_and_place_the_subject(
    call: Callable[..., Any], files: Any
) -> None:
    folder, _ = files
    path = str(folder / "photo.jpg")
    whole, scaled, placed = call(
        ("removeBackgroundFromImageFile", {"path": path, "size": "full"}),
        ("removeBackgroundFromImageFile", {"path": path, "size": "full", "scale": "50%"}),
        (
            "removeBackgroundFromImageFile",
            {"path": path, "size": "full", "scale": "50%", "position": "0% 0%"},
        ),
    )

    def box(img: Image.Image, above: int = 128) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(alpha(img) > above)
        return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())

    x0, y0, x1, y1 = box(picture(whole))
    assert (x1 - x0, y1 - y0) > (60, 60)
    sx0, sy0, sx1, sy1 = box(picture(scaled))
    # remove.bg's scale: the subject's longer side at that share of the canvas, centred.
    assert max(sx1 - sx0, sy1 - sy0) <= 0.5 * max(W, H) + 2
    assert abs((sx0 + sx1) / 2 - W / 2) <= 2 and abs((sy0 + sy1) / 2 - H / 2) <= 2
    # The subject's box (every pixel it touches, however faint) at the top left corner.
    px0, py0, _, _ = box(picture(placed), above=0)
    assert (px0, py0) == (0, 0)
    assert (x1 - x0) > (sx1 - sx0) and (y1 - y0) > (sy1 - sy0)


def test_roi_leaves_everything_outside_it_transparent(call: Callable[..., Any], files: Any) -> None:
    folder, _ = files
    path = str(folder / "photo.jpg")
    percent, pixels = call(
        ("removeBackgroundFromImageFile", {"path": path, "size": "full", "roi": "0% 0% 50% 100%"}),
        (
            "removeBackgroundFromImageFile",
            {"path": path, "size": "full", "roi": f"0px 0px {W // 2 - 1}px {H - 1}px"},
        ),
    )
    for out in (percent, pixels):
        a = alpha(picture(out))
        assert a[:, W // 2 + 1 :].max() == 0
        assert a[H // 2, W // 2 - 10] > 200


def test_colour_and_image_backgrounds_fill_the_transparent_parts(
    call: Callable[..., Any], files: Any
) -> None:
    folder, files_url = files
    path = str(folder / "photo.jpg")
    red, green = call(
        ("removeBackgroundFromImageFile", {"path": path, "size": "full", "bg_color": "red"}),
        (
            "removeBackgroundFromImageFile",
            {"path": path, "size": "full", "bg_image_url": f"{files_url}/green.png"},
        ),
    )
    for out, colour in ((red, (255, 0, 0)), (green, GREEN)):
        img = picture(out)
        # format defaults to auto: nothing transparent is left, so remove.bg sends a JPEG.
        assert img.format == "JPEG" and img.size == (W, H)
        corner = np.asarray(img.convert("RGB"))[3, 3].astype(int)
        assert np.abs(corner - colour).max() <= 12, corner


def test_crop_channels_type_and_shadow_are_accepted(call: Callable[..., Any], files: Any) -> None:
    folder, _ = files
    options = {
        "path": str(folder / "photo.jpg"),
        "size": "full",
        "crop": True,
        "channels": "alpha",
        "type": "product",
        "add_shadow": True,
    }
    tight, margin = call(
        ("removeBackgroundFromImageFile", options),
        ("removeBackgroundFromImageFile", {**options, "crop_margin": "10px"}),
    )
    tight_img, margin_img = picture(tight), picture(margin)
    # The matte alone, cropped to the subject, then 10 px more on each side.
    assert tight_img.mode == margin_img.mode == "L"
    assert tight_img.width < W and tight_img.height < H
    assert margin_img.size == (tight_img.width + 20, tight_img.height + 20)


def test_url_and_base64_inputs_give_what_the_file_gives(
    call: Callable[..., Any], files: Any
) -> None:
    folder, files_url = files
    photo = folder / "photo.jpg"
    by_file, by_url, by_b64 = call(
        ("removeBackgroundFromImageFile", {"path": str(photo), "size": "full"}),
        ("removeBackgroundFromImageUrl", {"url": f"{files_url}/photo.jpg", "size": "full"}),
        (
            "removeBackgroundFromImageBase64",
            {"base64img": base64.b64encode(photo.read_bytes()).decode(), "size": "full"},
        ),
    )
    reference = np.asarray(picture(by_file))
    for out in (by_url, by_b64):
        assert np.array_equal(np.asarray(picture(out)), reference)


def test_the_client_reports_remove_bg_errors(call: Callable[..., Any], files: Any) -> None:
    folder, _ = files
    path = str(folder / "photo.jpg")
    bad_scale, bad_roi, unreachable = call(
        ("removeBackgroundFromImageFile", {"path": path, "scale": "500%"}),
        ("removeBackgroundFromImageFile", {"path": path, "roi": "1 2 3"}),
        ("removeBackgroundFromImageUrl", {"url": "http://169.254.169.254/latest/meta-data"}),
    )
    for out in (bad_scale, bad_roi, unreachable):
        assert not out["ok"]
        # remove.bg's error body: a list of {title, code}, which the client passes on.
        (error,) = out["errors"]
        assert error["title"] and error["code"]
