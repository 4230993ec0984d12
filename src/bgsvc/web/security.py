"""What browsers are told: the page's security headers and CORS for pages served elsewhere.

``PAGE_HEADERS`` go on the built-in page and its files (bgsvc.routes.ui); ``add_cors``
lets the origins of BGSVC_CORS_ORIGINS call the API from their own pages.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

# Everything from the service's own origin, nothing else, with two needs of the page:
#   img-src blob:  the previews (before/after) are object URLs of the chosen file and of
#                  the result (app.js URL.createObjectURL); downloads are blob: links too,
#                  but a navigation is not governed by img-src or any other fetch directive.
#   media-src blob:  the same for a video and its result, played in <video> elements.
#   frame-ancestors 'none'  no site may frame the page (clickjacking); the CSP form of
#                  X-Frame-Options, which is sent as well for browsers without it.
# No 'unsafe-inline' anywhere: the page has no inline script or style attribute (app.js
# sets styles through the CSSOM, which CSP does not govern). connect-src, script-src and
# style-src fall back to default-src 'self': fetch() goes to this origin only.
# base-uri and form-action do not fall back to default-src, so they are named.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' blob:",
        "media-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

PAGE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # The page links nowhere, and a result's URL (jobs, presigned storage links) may carry
    # a token in its query: no page it leads to learns where it came from.
    "Referrer-Policy": "no-referrer",
}

# Headers a browser script may send besides the CORS-safelisted ones.
CORS_ALLOW_HEADERS = ["X-Api-Key", "Authorization", "Idempotency-Key", "X-Request-ID"]
# Response headers a browser script may read (the safelisted ones need no mention): the
# rate-limit and credit headers of the limits, the job's Location, the result's metadata.
CORS_EXPOSE_HEADERS = [
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Credits-Charged",
    "Retry-After",
    "Location",
    "Content-Disposition",
    "X-Cache",
    "X-Request-ID",
    "X-Served-By",
    "X-Model",
    "X-Width",
    "X-Height",
    "X-Source-Width",
    "X-Source-Height",
    "X-Foreground-Top",
    "X-Foreground-Left",
    "X-Foreground-Width",
    "X-Foreground-Height",
    "Server-Timing",
    "WWW-Authenticate",
]
CORS_MAX_AGE_S = 600


def add_cors(app: FastAPI, origins: list[str]) -> None:
    """Answer CORS preflights and tag answers for ``origins``; nothing when empty.

    Added last, so it runs first: a preflight (which carries no key) is answered before
    any authentication, admission or limit sees it, and their refusals (401, 429...) still
    carry the CORS headers a page needs to read them.
    """
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        # Keys travel in headers, never in cookies: credentials mode stays off, so a
        # page can never ride on a user's ambient authority.
        allow_credentials=False,
        allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
        max_age=CORS_MAX_AGE_S,
    )
