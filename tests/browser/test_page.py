"""The web page at ``/`` driven in Debian's chromium against a real service (tiny model)."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

DONE_TIMEOUT_MS = 60_000
TIMES = "\u00d7"  # the multiplication sign the page prints in "300 x 200 px"


def make_photo(width: int = 300, height: int = 200, fmt: str = "JPEG") -> bytes:
    """A bright disc on a dark, slightly noisy background: the tiny model keeps bright pixels."""
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) * 0.3) ** 2
    rng = np.random.default_rng(0)
    rgb = rng.integers(10, 40, size=(height, width, 3)).astype(np.uint8)
    rgb[disc] = (240, 200, 60)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, quality=92)
    return buf.getvalue()


def upload(page: Any, *files: tuple[str, bytes, str]) -> None:
    page.locator("#file-input").set_input_files(
        [{"name": name, "mimeType": mime, "buffer": data} for name, data, mime in files]
    )


def card(page: Any, name: str) -> Any:
    return page.locator(".card", has=page.locator(".card-title", has_text=name))


def wait_state(page: Any, name: str, state: str) -> Any:
    from playwright.sync_api import expect

    c = card(page, name)
    expect(c).to_have_attribute("data-state", state, timeout=DONE_TIMEOUT_MS)
    return c


def result_bytes(page: Any, name: str) -> bytes:
    """The bytes behind the result (a blob: URL), as the card's Download link saves them.

    Not by fetch() inside the page: the page's CSP (connect-src 'self') rightly refuses
    fetches of blob: URLs, which the page itself never needs."""
    with page.expect_download() as download:
        card(page, name).get_by_role("link", name="Download").click()
    path = download.value.path()
    return Path(path).read_bytes()


def is_remove_request(request: Any) -> bool:
    return request.method == "POST" and "/remove-background" in request.url


def query(request: Any) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))


def test_page_loads_with_labelled_controls(page: Any, service: Any) -> None:
    assert page.title() == "Background remover"
    assert page.get_by_text("Drop images or videos here").is_visible()
    # Assets come from the service itself, with the right types.
    for path, kind in [("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
        resp = page.request.get(service.url(path))
        assert resp.status == 200 and kind in resp.headers["content-type"]
    assert page.request.get(service.url("/static/../config.py")).status == 404
    # The footer names the model the results come from and its licence, as /models says.
    footer = page.locator("#model-licence")
    footer.wait_for(state="visible")
    assert "licensed" in footer.inner_text()
    # The file picker is the first thing a keyboard reaches.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file-input"
    # Every form control on the page (including a result card) has an accessible name.
    upload(page, ("photo.jpg", make_photo(), "image/jpeg"))
    wait_state(page, "photo.jpg", "done")
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, a.button')]
              .filter((el) => el.offsetParent !== null || el.id === 'file-input')
              .filter((el) => !(el.labels?.length || el.getAttribute('aria-label')
                                || el.textContent.trim()))
              .map((el) => el.outerHTML)"""
    )
    assert unnamed == []


def test_upload_photo_shows_transparent_png(page: Any, artifacts: Path) -> None:
    upload(page, ("photo.jpg", make_photo(300, 200), "image/jpeg"))
    c = wait_state(page, "photo.jpg", "done")

    img = Image.open(io.BytesIO(result_bytes(page, "photo.jpg")))
    assert img.format == "PNG"
    assert img.size == (300, 200)
    assert img.mode == "RGBA"
    alpha = np.asarray(img)[:, :, 3]
    assert alpha[100, 150] > 128, "the bright disc in the middle is kept"
    assert alpha[5, 5] < 64, "the dark corner is removed"

    info = c.locator(".out-size").inner_text()
    assert f"300 {TIMES} 200 px" in info and "PNG" in info
    assert "inference" in c.locator(".timing").inner_text()
    # Shown once the original is decoded too, which may be after a fast answer.
    c.locator(".slider").wait_for(state="visible")
    page.screenshot(path=str(artifacts / "page-result.png"), full_page=True)

    # Left of the split: the original (dark corner); right: the result, whose removed
    # background shows the light checkerboard, not the original underneath.
    view = np.asarray(Image.open(io.BytesIO(c.locator(".compare").screenshot())).convert("L"))
    h, w = view.shape
    assert view[h // 20, w // 20] < 80
    assert view[h // 20, w - w // 20] > 150

    # The slider moves the split between before and after.
    c.locator(".slider").fill("20")
    assert c.evaluate("(el) => el.style.getPropertyValue('--split')") == "20%"
    # Preview background choice applies to the result view.
    page.get_by_label("Black", exact=True).check()
    bg = c.locator(".compare").evaluate("(el) => getComputedStyle(el).backgroundColor")
    assert bg == "rgb(0, 0, 0)"
    page.screenshot(path=str(artifacts / "page-result-black.png"), full_page=True)


def test_option_change_reruns_only_that_image(page: Any) -> None:
    upload(
        page,
        ("first.jpg", make_photo(), "image/jpeg"),
        ("second.jpg", make_photo(240, 160), "image/jpeg"),
    )
    wait_state(page, "first.jpg", "done")
    second = wait_state(page, "second.jpg", "done")
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r) if is_remove_request(r) else None)

    with page.expect_request(is_remove_request) as req:
        second.get_by_label("Format").select_option("webp")
    assert query(req.value)["format"] == "webp"
    wait_state(page, "second.jpg", "done")
    assert Image.open(io.BytesIO(result_bytes(page, "second.jpg"))).format == "WEBP"
    assert second.locator("a.download").get_attribute("download") == "second-nobg.webp"

    with page.expect_request(is_remove_request) as req:
        second.get_by_label("Fill background").check()
    q = query(req.value)
    assert q["bg_color"] == "#ffffff" and q["format"] == "webp"
    wait_state(page, "second.jpg", "done")
    filled = Image.open(io.BytesIO(result_bytes(page, "second.jpg"))).convert("RGBA")
    assert np.asarray(filled)[3, 3, 3] == 255, "filled background is opaque"

    with page.expect_request(is_remove_request) as req:
        second.get_by_label("Mask only").check()
    assert query(req.value)["channels"] == "alpha"
    wait_state(page, "second.jpg", "done")
    assert second.locator("a.download").get_attribute("download") == "second-mask.webp"

    # Only the changed card went back to the server; the other kept its PNG.
    assert len(sent) == 3
    # (the second photo is the 240 px wide one)
    assert [r.response().headers["x-width"] for r in sent] == ["240"] * 3
    assert card(page, "first.jpg").locator("a.download").get_attribute("download") == (
        "first-nobg.png"
    )


def test_crop_sends_margin_and_shrinks_output(page: Any) -> None:
    upload(page, ("disc.png", make_photo(300, 200, "PNG"), "image/png"))
    c = wait_state(page, "disc.png", "done")
    c.get_by_label("Crop to subject").check()
    with page.expect_request(is_remove_request) as req:
        margin = c.get_by_label("margin")
        margin.fill("5px")
        margin.press("Enter")
        margin.blur()
    q = query(req.value)
    assert q["crop"] == "true" and q["crop_margin"] == "5px"
    wait_state(page, "disc.png", "done")
    width, height = Image.open(io.BytesIO(result_bytes(page, "disc.png"))).size
    assert width < 300 and height < 200
    assert c.locator(".out-size").inner_text().startswith(f"{width} {TIMES} {height} px")

    # A margin the server could not read is caught in the page, without a request.
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r) if is_remove_request(r) else None)
    margin.fill("lots")
    margin.press("Enter")
    margin.blur()
    wait_state(page, "disc.png", "error")
    assert "option" in c.locator(".status").inner_text()
    assert sent == []


def test_non_image_shows_server_message(page: Any, service: Any, artifacts: Path) -> None:
    text = b"this is not an image\n"
    upload(page, ("notes.txt", text, "text/plain"))
    c = wait_state(page, "notes.txt", "error")

    direct = page.request.post(
        service.url("/remove-background"),
        multipart={"file": {"name": "notes.txt", "mimeType": "text/plain", "buffer": text}},
    )
    assert direct.status in (400, 415)
    message = json.loads(direct.body())["message"]
    shown = c.locator(".status").inner_text()
    assert f"Error {direct.status}" in shown and message in shown
    assert c.get_by_role("button", name="Try again").is_visible()
    assert c.locator("a.download").is_hidden()
    page.screenshot(path=str(artifacts / "page-error.png"), full_page=True)


def test_busy_429_is_retried_after_retry_after(page: Any) -> None:
    calls: list[str] = []

    def busy_once(route: Any) -> None:
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(
                status=429,
                headers={"Retry-After": "1", "Content-Type": "application/json"},
                body=json.dumps({"code": "busy", "message": "Queue full", "request_id": "x"}),
            )
        else:
            route.continue_()

    page.route("**/remove-background*", busy_once)
    upload(page, ("photo.jpg", make_photo(), "image/jpeg"))
    c = wait_state(page, "photo.jpg", "busy")
    assert "retrying" in c.locator(".status").inner_text()
    wait_state(page, "photo.jpg", "done")
    assert len(calls) == 2


def test_download_one_and_all(page: Any, artifacts: Path) -> None:
    upload(
        page,
        ("photo.jpg", make_photo(), "image/jpeg"),
        ("other.jpeg", make_photo(200, 300), "image/jpeg"),
    )
    one = wait_state(page, "photo.jpg", "done")
    wait_state(page, "other.jpeg", "done")

    with page.expect_download() as dl:
        one.get_by_role("link", name="Download photo-nobg.png").click()
    assert dl.value.suggested_filename == "photo-nobg.png"
    saved = artifacts / "download-photo-nobg.png"
    dl.value.save_as(saved)
    assert saved.read_bytes() == result_bytes(page, "photo.jpg")

    with page.expect_download() as dl:
        page.get_by_role("button", name="Download all").click()
    assert dl.value.suggested_filename.endswith(".zip")
    archive = artifacts / "download-all.zip"
    dl.value.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None, "CRCs match"
        assert sorted(z.namelist()) == ["other-nobg.png", "photo-nobg.png"]
        assert z.read("photo-nobg.png") == saved.read_bytes()
        assert Image.open(io.BytesIO(z.read("other-nobg.png"))).size == (200, 300)


def test_paste_and_drop_add_images(page: Any) -> None:
    png = base64.b64encode(make_photo(120, 80, "PNG")).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
            const paste = new DataTransfer();
            paste.items.add(new File([bytes], "image.png", { type: "image/png" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: paste }));
            const drop = new DataTransfer();
            drop.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            document.querySelector("#dropzone").dispatchEvent(
                new DragEvent("drop", { dataTransfer: drop, bubbles: true, cancelable: true }));
        }""",
        png,
    )
    wait_state(page, "pasted-1.png", "done")
    wait_state(page, "dropped.png", "done")
    assert page.locator(".card").count() == 2
    card(page, "dropped.png").get_by_role("button", name="Remove dropped.png").click()
    assert page.locator(".card").count() == 1


def test_phone_layout_has_no_sideways_scroll(browser: Any, service: Any, artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2)
    try:
        page = context.new_page()
        page.goto(service.url("/"))
        upload(page, ("photo.jpg", make_photo(), "image/jpeg"))
        wait_state(page, "photo.jpg", "done")
        page.screenshot(path=str(artifacts / "page-phone.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
    finally:
        context.close()


def test_ui_can_be_switched_off(
    request: pytest.FixtureRequest, service: Any, launch_service: Any
) -> None:
    if service.proc is None:
        pytest.skip("starts its own service; BGSVC_TEST_BASE_URL is set")
    off = launch_service(request.getfixturevalue("tiny_model_path"), {"BGSVC_UI_ENABLED": "false"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(off.url("/"), timeout=10)
    err.value.close()
    assert err.value.code == 404
    with urllib.request.urlopen(off.url("/models"), timeout=10) as resp:
        assert resp.status == 200
