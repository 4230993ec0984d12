"""The web page: ``GET /`` and its static files, served from the package itself.

The page is plain HTML, CSS and JavaScript (no build step, no CDN) kept in
``bgsvc/web/static``. The app factory includes this router only when
``settings.ui_enabled`` is true.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from bgsvc.web.security import PAGE_HEADERS

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"

# Only these files are served: no directory listing, no path handling to get wrong.
_STATIC_FILES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "batch.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}

# The files are small; "no-cache" makes the browser revalidate (ETag) so an upgrade shows at once.
_HEADERS = {"Cache-Control": "no-cache", **PAGE_HEADERS}


def _file(name: str) -> FileResponse:
    media_type = _STATIC_FILES.get(name)
    path = STATIC_DIR / name
    if media_type is None or not path.is_file():
        raise HTTPException(status_code=404, detail="Not Found")
    return FileResponse(path, media_type=media_type, headers=_HEADERS)


def build_router() -> APIRouter:
    """Router serving the page at ``/`` and its assets at ``/static/{name}``."""
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    def index() -> FileResponse:
        return _file("index.html")

    @router.api_route("/static/{name}", methods=["GET", "HEAD"])
    def static(name: str) -> FileResponse:
        return _file(name)

    return router
