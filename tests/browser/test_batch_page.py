"""The web page's batch mode (src/bgsvc/web/static/batch.js) in chromium against a real service:
more than five images go to POST /batches as one request; five or fewer go one request each."""

from __future__ import annotations

import io
import json
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bgsvc.web.security import CONTENT_SECURITY_POLICY
from tests.browser.test_page import DONE_TIMEOUT_MS, make_photo, upload, wait_state

pytestmark = pytest.mark.browser

# The policy the service sends (bgsvc.web.security), also forced on by with_csp.
CSP = CONTENT_SECURITY_POLICY


def photos(count: int) -> list[tuple[str, bytes, str]]:
    return [(f"p{i}.jpg", make_photo(60 + 4 * i, 40), "image/jpeg") for i in range(count)]


def is_batch_submit(request: Any) -> bool:
    return request.method == "POST" and urllib.parse.urlsplit(request.url).path == "/batches"


def is_batch_poll(request: Any) -> bool:
    return request.method == "GET" and urllib.parse.urlsplit(request.url).path.startswith(
        "/batches/"
    )


def is_remove_request(request: Any) -> bool:
    return request.method == "POST" and "/remove-background" in request.url


def with_csp(page: Any, service: Any) -> list[str]:
    """Reload the page with the CSP header; returns the violations the page reports."""
    violations: list[str] = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )

    def add_header(route: Any) -> None:
        resp = route.fetch()
        route.fulfill(response=resp, headers={**resp.headers, "content-security-policy": CSP})

    page.route(service.url("/"), add_header)
    page.goto(service.url("/"))
    return violations


def test_six_images_go_as_one_batch_with_progress_and_a_zip(
    page: Any, service: Any, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    violations = with_csp(page, service)
    # The options the user last chose (WebP here) apply to the batch too.
    upload(page, ("first.jpg", make_photo(), "image/jpeg"))
    first = wait_state(page, "first.jpg", "done")
    first.get_by_label("Format").select_option("webp")
    wait_state(page, "first.jpg", "done")

    removes: list[Any] = []
    polls: list[Any] = []
    page.on("request", lambda r: removes.append(r) if is_remove_request(r) else None)
    page.on("request", lambda r: polls.append(r) if is_batch_poll(r) else None)
    with page.expect_request(is_batch_submit) as submitted:
        upload(page, *photos(6))
    sent = submitted.value
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(sent.url).query)["format"] == ["webp"]
    assert sent.post_data_buffer.count(b'name="file"') == 6

    batch = page.locator(".batch")
    expect(batch.locator(".batch-count")).to_have_text("6/6 done", timeout=DONE_TIMEOUT_MS)
    expect(batch).to_have_attribute("data-state", "done")
    assert batch.locator("progress").evaluate("(p) => [p.value, p.max]") == [6, 6]
    items = batch.locator(".batch-items li")
    assert items.count() == 6
    assert items.evaluate_all("(lis) => lis.map((li) => li.dataset.status)") == ["succeeded"] * 6
    assert batch.locator(".batch-options").inner_text() == "Options: WebP, quality 90"
    assert removes == [], "no per-image requests for a batch"
    assert page.locator(".card").count() == 1
    page.screenshot(path=str(artifacts / "page-batch.png"), full_page=True)

    # Polling stopped at completion: no request in three first-poll intervals.
    seen = len(polls)
    page.wait_for_timeout(1500)
    assert len(polls) == seen

    link = batch.get_by_role("link", name="Download zip")
    batch_id = sent.response().json()["id"]
    assert link.get_attribute("href") == f"/batches/{batch_id}/result.zip"
    with page.expect_download() as dl:
        link.click()
    archive = artifacts / "download-batch.zip"
    dl.value.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == [f"p{i}.webp" for i in range(6)]
        assert Image.open(io.BytesIO(z.read("p5.webp"))).size == (80, 40)
    assert violations == []

    # The panel fits a phone's width too.
    page.set_viewport_size({"width": 375, "height": 740})
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0


def test_five_images_still_go_one_request_each(page: Any) -> None:
    batches: list[Any] = []
    page.on("request", lambda r: batches.append(r) if is_batch_submit(r) else None)
    removes: list[Any] = []
    page.on("request", lambda r: removes.append(r) if is_remove_request(r) else None)
    upload(page, *photos(5))
    for i in range(5):
        wait_state(page, f"p{i}.jpg", "done")
    assert len(removes) == 5
    assert batches == []
    assert page.locator(".batch").count() == 0


def test_batch_busy_is_retried_and_a_refusal_shows_the_server_message(page: Any) -> None:
    from playwright.sync_api import expect

    answers = [
        (429, {"Retry-After": "1"}, {"code": "job_queue_full", "message": "Queue full"}),
        (413, {}, {"code": "batch_too_large", "message": "A batch holds at most 3 images."}),
    ]
    calls: list[str] = []

    def refuse(route: Any) -> None:
        if route.request.method != "POST" or not answers:
            route.continue_()
            return
        calls.append(route.request.url)
        status, headers, body = answers.pop(0)
        headers = {**headers, "Content-Type": "application/json"}
        route.fulfill(status=status, headers=headers, body=json.dumps(body))

    page.route(lambda url: urllib.parse.urlsplit(url).path == "/batches", refuse)
    upload(page, *photos(6))
    batch = page.locator(".batch")
    expect(batch).to_have_attribute("data-state", "busy")
    assert "sending again" in batch.locator(".status").inner_text()
    expect(batch).to_have_attribute("data-state", "error", timeout=DONE_TIMEOUT_MS)
    shown = batch.locator(".status").inner_text()
    assert shown == "Error 413: A batch holds at most 3 images."
    assert len(calls) == 2

    # "Try again" sends the same images once more; this time the server takes them.
    batch.get_by_role("button", name="Try again").click()
    expect(batch.locator(".batch-count")).to_have_text("6/6 done", timeout=DONE_TIMEOUT_MS)
    assert batch.get_by_role("link", name="Download zip").is_visible()
