"""Fetch an image by URL: the outbound guard decides where, this module what comes back.

Every fetch goes through ``bgsvc.outbound`` (scheme, address policy, one resolution,
redirects re-checked, streamed size limit, timeouts); the body must then be an image in an
accepted format, read from its bytes, whatever the server's Content-Type says.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio.to_thread

from bgsvc.errors import BgsvcError
from bgsvc.inference.scheduler import Places
from bgsvc.outbound.client import OutboundClient, Resolver, system_resolver
from bgsvc.outbound.content import sniff_image_format

if TYPE_CHECKING:
    from bgsvc.config import Settings
    from bgsvc.metrics import Metrics

# The bound: enough for a CDN's http -> https -> canonical host hops, no more.
MAX_REDIRECTS = 3


class UrlFetcher:
    """Fetches image URLs for the API routes; one per process, closed with ``aclose``."""

    def __init__(
        self,
        client: OutboundClient,
        *,
        max_bytes: int,
        allowed_formats: list[str],
        metrics: Metrics | None = None,
        max_concurrent: int = 8,
    ) -> None:
        self._client = client
        self._max_bytes = max_bytes
        self._formats = list(allowed_formats)
        self._metrics = metrics
        # Fetches in flight, like uploads being received: each may bring max_bytes.
        self._places = Places(max_concurrent, "image URLs being fetched")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        resolver: Resolver = system_resolver,
    ) -> UrlFetcher:
        """A fetcher with the BGSVC_OUTBOUND_* guard, the upload size limit and the
        accepted formats of uploads, so that a URL can do no more than an upload."""
        return cls(
            OutboundClient.from_settings(settings, resolver=resolver),
            max_bytes=settings.max_upload_bytes,
            allowed_formats=settings.allowed_formats,
            metrics=metrics,
            max_concurrent=settings.max_concurrent_uploads,
        )

    async def fetch(self, url: str, owner: str | None = None) -> bytes:
        """The image bytes at ``url``. Raises the outbound errors (UrlInvalid,
        UrlForbidden, UrlFetchFailed, UrlTooLarge: all 400) or, for a body that is not an
        accepted image, the same errors an upload of it would get; Overloaded (429) at
        once while every fetch place, or ``owner``'s (an API key's) share, is taken."""
        with self._places.hold(owner):
            return await self._fetch(url)

    async def _fetch(self, url: str) -> bytes:
        started = time.perf_counter()
        # Overwritten below; what stays is a cancelled or unexpected end.
        outcome = "error"
        try:
            response = await self._client.fetch(
                url, max_bytes=self._max_bytes, max_redirects=MAX_REDIRECTS
            )
            # Pillow reads only the header here, but off the loop all the same: a
            # crafted header is the one part of this an attacker controls.
            await anyio.to_thread.run_sync(sniff_image_format, response.content, self._formats)
            outcome = "fetched"
            return response.content
        except BgsvcError as exc:
            outcome = exc.code
            raise
        finally:
            if self._metrics is not None:
                self._metrics.url_fetches.labels(outcome).inc()
                self._metrics.url_fetch_seconds.labels(outcome).observe(
                    time.perf_counter() - started
                )

    async def aclose(self) -> None:
        await self._client.aclose()
