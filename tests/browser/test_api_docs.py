"""The API reference pages in Chromium, their CDN files served in the CDN's place from the
npm packages they are published in (tests/clients/apidocs.py; `make clients` fetches them):
each page renders with its pinned files, and a script that differs by a byte is refused."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.conftest import Service
from tests.clients.apidocs import ASSETS, local_file

pytestmark = pytest.mark.browser

CONTENT_TYPES = {".js": "application/javascript", ".css": "text/css"}


def _cdn(changed: bool = False) -> Callable[[Any], None]:
    """A route handler answering as the CDN would: the file, with CORS (the pages ask for
    it, anonymously, to check the hash); ``changed`` appends a comment to scripts."""

    def handle(route: Any) -> None:
        path = local_file(route.request.url.split("?")[0])
        if not path.is_file():
            route.abort()
            return
        body = path.read_bytes()
        if changed and path.suffix == ".js":
            body += b"\n/* not the published file */\n"
        route.fulfill(
            status=200,
            body=body,
            headers={
                "Content-Type": CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                "Access-Control-Allow-Origin": "*",
            },
        )

    return handle


@pytest.fixture
def fetched() -> None:
    missing = [a.url for a in ASSETS if not local_file(a.url).is_file()]
    if missing:
        reason = f"run `make clients` (python -m tests.clients.apidocs): missing {missing}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.usefixtures("fetched")
@pytest.mark.parametrize(
    ("path", "title"),
    [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")],
)
def test_a_reference_page_renders_with_its_pinned_files_and_refuses_a_changed_script(
    browser: Any, service: Service, path: str, title: str
) -> None:
    for changed in (False, True):
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            refused: list[str] = []
            page.on(
                "console",
                lambda m, into=refused: (
                    into.append(m.text) if "integrity" in m.text.lower() else None
                ),
            )
            page.route("https://cdn.jsdelivr.net/**", _cdn(changed))
            if not changed:
                page.goto(service.url(path), wait_until="load")
                page.wait_for_selector(title)
                assert "bgsvc" in page.locator(title).first.text_content()
                assert refused == []
            else:
                # Chromium reports the refusal on the console, naming the integrity check.
                with page.expect_console_message(lambda m: "integrity" in m.text.lower()):
                    page.goto(service.url(path), wait_until="load")
                assert page.locator(title).count() == 0
        finally:
            context.close()
