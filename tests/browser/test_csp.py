"""The page under the Content-Security-Policy the service really sends: a single image
and a batch, start to download, without one violation."""

from __future__ import annotations

import io
import urllib.request
import zipfile
from typing import Any

import pytest

from bgsvc.web.security import CONTENT_SECURITY_POLICY
from tests.browser.test_batch_page import photos
from tests.browser.test_page import DONE_TIMEOUT_MS, make_photo, upload, wait_state

pytestmark = pytest.mark.browser

# Records every violation the document reports, from before the page's own scripts run.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


def test_page_works_under_its_csp_without_a_violation(page: Any, service: Any) -> None:
    from playwright.sync_api import expect

    with urllib.request.urlopen(service.url("/"), timeout=10) as response:
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if "Content Security" in m.text else None)
    page.add_init_script(RECORD_VIOLATIONS)
    loaded = page.goto(service.url("/"))
    assert loaded.headers["content-security-policy"] == CONTENT_SECURITY_POLICY

    # One image: the blob: preview, the result, its download.
    upload(page, ("one.jpg", make_photo(), "image/jpeg"))
    done = wait_state(page, "one.jpg", "done")
    after = done.locator("img.after")
    expect(after).to_be_visible()
    assert after.get_attribute("src", timeout=5000).startswith("blob:")
    assert after.evaluate("(img) => img.complete && img.naturalWidth > 0")
    with page.expect_download() as download:
        done.get_by_role("link", name="Download").click()
    assert download.value.failure() is None

    # A batch: submitted, polled, its zip downloaded.
    upload(page, *photos(6))
    batch = page.locator(".batch")
    expect(batch.locator(".batch-count")).to_have_text("6/6 done", timeout=DONE_TIMEOUT_MS)
    with page.expect_download() as zipped:
        batch.get_by_role("link", name="Download zip").click()
    path = zipped.value.path()
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        assert len(archive.namelist()) == 6

    assert page.evaluate("window.__cspViolations") == []
    assert console == []
