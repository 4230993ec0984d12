"""The page against a service that requires keys: it asks for one, keeps it, sends it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.auth.conftest import PEPPER, add_key
from tests.browser.test_page import make_photo, upload, wait_state

pytestmark = pytest.mark.browser


def test_page_asks_for_a_key_after_401_and_sends_the_saved_one(
    browser: Any, launch_service: Callable[..., Any], tiny_model_path: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    secret = add_key(data_dir, "page")
    service = launch_service(
        tiny_model_path,
        {"BGSVC_AUTH": "required", "BGSVC_AUTH_PEPPER": PEPPER, "BGSVC_DATA_DIR": str(data_dir)},
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    sent: list[str | None] = []
    page.on(
        "request",
        lambda r: (
            sent.append(r.headers.get("x-api-key"))
            if r.url.endswith("/remove-background") or "/remove-background?" in r.url
            else None
        ),
    )
    try:
        page.goto(service.url("/"))
        upload(page, ("photo.jpg", make_photo(), "image/jpeg"))
        wait_state(page, "photo.jpg", "error")
        assert "API key" in page.locator("#api-key-note").text_content()
        assert page.evaluate("document.activeElement.id") == "api-key"
        page.locator("#api-key").fill(secret)
        page.get_by_role("button", name="Save").click()
        wait_state(page, "photo.jpg", "done")
        assert sent == [None, secret]
        # Kept for the tab (a reload sends it from the start), never for good.
        assert page.evaluate("sessionStorage.getItem('bgsvc.apiKey')") == secret
        assert page.evaluate("localStorage.length") == 0
        page.reload()
        assert page.locator("#api-key").input_value() == secret
    finally:
        context.close()
