"""The API reference pages: /docs (Swagger UI) and /redoc (ReDoc).

Their scripts come from a CDN at pinned versions, each held to its published hash
(Subresource Integrity). These pages share the service's origin with the web page, which
keeps a tenant's key in the browser: a CDN, or a release of a floating version, that
served other code must get its script blocked, not run where the key is.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse


@dataclass(frozen=True)
class Asset:
    """A file on the CDN and the sha384 of its bytes (the npm package's own file)."""

    url: str
    integrity: str


_CDN = "https://cdn.jsdelivr.net/npm"
SWAGGER_JS = Asset(
    f"{_CDN}/swagger-ui-dist@5.35.0/swagger-ui-bundle.js",
    "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9",
)
SWAGGER_CSS = Asset(
    f"{_CDN}/swagger-ui-dist@5.35.0/swagger-ui.css",
    "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I",
)
REDOC_JS = Asset(
    f"{_CDN}/redoc@2.5.4/bundles/redoc.standalone.js",
    "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5",
)

router = APIRouter(include_in_schema=False)


def pinned(page: HTMLResponse, *assets: Asset) -> HTMLResponse:
    """``page`` with each asset's reference carrying its hash; a reference the page no
    longer makes (another FastAPI's template) is an error, not an unchecked script."""
    html = bytes(page.body).decode()
    for asset in assets:
        quoted = f'"{asset.url}"'
        if quoted not in html:
            raise RuntimeError(f"the API reference page no longer loads {asset.url}")
        html = html.replace(
            quoted, f'{quoted} integrity="{asset.integrity}" crossorigin="anonymous"'
        )
    return HTMLResponse(html)


def _openapi_url(request: Request) -> str:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root + str(request.app.openapi_url)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=SWAGGER_JS.url,
        swagger_css_url=SWAGGER_CSS.url,
    )
    return pinned(page, SWAGGER_JS, SWAGGER_CSS)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=REDOC_JS.url,
        with_google_fonts=False,
    )
    return pinned(page, REDOC_JS)
