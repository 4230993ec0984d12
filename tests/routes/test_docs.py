"""The API reference pages load only scripts pinned to their hashes."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_reference_pages_load_remote_files_only_at_pinned_versions_with_their_hashes(
    client: TestClient, path: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    tags = re.findall(r"<(?:script|link)\b[^>]*>", page.text)
    remote = [tag for tag in tags if "https://" in tag and "favicon" not in tag]
    assert remote, page.text
    for tag in remote:
        url = re.search(r'(?:src|href)="([^"]+)"', tag)
        assert url is not None, tag
        # An exact version (x.y.z), never a floating one such as @5.
        assert re.search(r"@\d+\.\d+\.\d+/", url.group(1)), tag
        assert re.search(r'integrity="sha384-[A-Za-z0-9+/]{64}"', tag), tag
        assert 'crossorigin="anonymous"' in tag, tag
    # The spec is this service's own, and no font is fetched from a third party.
    assert "/openapi.json" in page.text and "fonts.googleapis.com" not in page.text
