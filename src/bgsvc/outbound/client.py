"""Outbound HTTP (URL inputs, webhook deliveries) that cannot be turned on our own network.

The name is resolved once, here; every address it resolves to is checked by the policy, and
the connection is made to a checked address (the URL's host replaced by it, the name sent as
Host and, for https, as SNI, so that the certificate is still verified against the name).
Nothing between the check and the connect resolves the name again, which is what DNS
rebinding needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.cookiejar
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from bgsvc import __version__
from bgsvc.errors import UrlFetchFailed, UrlTooLarge
from bgsvc.outbound.policy import AllowList, IPAddress, OutboundPolicy, parse_ip_literal
from bgsvc.outbound.target import Target, parse_target

if TYPE_CHECKING:
    from bgsvc.config import Settings

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A name with many records must not multiply the connect timeout without bound.
_MAX_ADDRESSES = 3


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses getaddrinfo gives for ``host`` (the system resolver, /etc/hosts too)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


@dataclass(frozen=True)
class OutboundResponse:
    """A finished exchange: the final URL, its status and headers, and the body read."""

    url: str
    status: int
    headers: httpx.Headers
    content: bytes
    address: str
    redirects: tuple[str, ...] = ()


def _no_cookies() -> http.cookiejar.CookieJar:
    # Every host is reached by address, so a jar would hand one host's cookies to another
    # that shares its address.
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class OutboundClient:
    """GET and POST through the outbound policy; one per process, closed with ``aclose``."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        total_timeout_s: float = 30.0,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._policy = policy
        self._resolve = resolver
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._total_timeout_s = total_timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            follow_redirects=False,
            # No HTTP(S)_PROXY from the environment: the connection goes where it was checked.
            trust_env=False,
            # A pooled TLS connection is keyed by address alone and could carry a request for
            # another name than the one its certificate was checked against.
            limits=httpx.Limits(max_keepalive_connections=0),
            cookies=_no_cookies(),
            verify=verify,
            # Bodies are counted as they arrive on the wire: a compressed one would be
            # inflated by httpx a whole read at a time before it could be counted (and
            # "gzip, gzip" multiplies that a thousandfold: 2 KB became 2.4 GB).
            headers={"User-Agent": f"bgsvc/{__version__}", "Accept-Encoding": "identity"},
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> OutboundClient:
        """A client with BGSVC_OUTBOUND_* applied."""
        return cls(
            OutboundPolicy(AllowList.parse(settings.outbound_allow)),
            connect_timeout_s=settings.outbound_connect_timeout_s,
            read_timeout_s=settings.outbound_read_timeout_s,
            total_timeout_s=settings.outbound_total_timeout_s,
            resolver=resolver,
            verify=verify,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        max_redirects: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> OutboundResponse:
        """GET ``url`` and return its 2xx body, following up to ``max_redirects`` redirects
        (each one checked like the first). Raises UrlInvalid, UrlForbidden, UrlFetchFailed
        (unreachable, timed out, a redirect too many, a status other than 2xx) or
        UrlTooLarge (more than ``max_bytes``, declared or counted while streaming)."""
        response = await self._exchange(
            "GET", url, None, headers or {}, max_bytes, max_redirects, truncate=False
        )
        if response.status in _REDIRECTS:
            limit = "redirects are not followed" if max_redirects == 0 else "too many redirects"
            raise UrlFetchFailed(f"{response.url} answered {response.status}: {limit}.")
        if not 200 <= response.status < 300:
            raise UrlFetchFailed(f"{response.url} answered {response.status}.")
        return response

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        max_bytes: int = 64 * 1024,
    ) -> OutboundResponse:
        """POST ``content`` to ``url`` and return the response whatever its status;
        redirects are never followed, and a larger body than ``max_bytes`` is cut off, not
        an error. Raises UrlInvalid, UrlForbidden or UrlFetchFailed."""
        return await self._exchange(
            "POST", url, content, headers, max_bytes, max_redirects=0, truncate=True
        )

    async def _exchange(
        self,
        method: str,
        url: str,
        content: bytes | None,
        headers: Mapping[str, str],
        max_bytes: int,
        max_redirects: int,
        *,
        truncate: bool,
    ) -> OutboundResponse:
        # Read timeouts apply per read; this bounds a body dripped a byte at a time.
        try:
            async with asyncio.timeout(self._total_timeout_s):
                target = parse_target(url)
                redirects: list[str] = []
                while True:
                    response = await self._send(
                        method, target, content, headers, max_bytes, truncate
                    )
                    location = response.headers.get("location")
                    if (
                        response.status not in _REDIRECTS
                        or not location
                        or len(redirects) >= max_redirects
                    ):
                        return dataclasses.replace(response, redirects=tuple(redirects))
                    target = target.join(location)
                    redirects.append(target.url)
                    if response.status == 303 or (
                        response.status in (301, 302) and method == "POST"
                    ):
                        method, content = "GET", None
        except TimeoutError as exc:
            raise UrlFetchFailed(
                f"{url} took longer than {self._total_timeout_s:g} s in all."
            ) from exc

    async def _addresses(self, target: Target) -> list[IPAddress]:
        if target.literal is not None:
            found = [target.literal]
        else:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    raw = await self._resolve(target.host, target.port)
            except TimeoutError as exc:
                raise UrlFetchFailed(f"Resolving {target.host} timed out.") from exc
            except OSError as exc:
                raise UrlFetchFailed(f"{target.host} could not be resolved.") from exc
            found = []
            for text in raw:
                ip = parse_ip_literal(text)
                if ip is not None and ip not in found:
                    found.append(ip)
            if not found:
                raise UrlFetchFailed(f"{target.host} has no address.")
        # Every address, not only the one used: a name mixing public and internal records
        # is refused outright.
        for ip in found:
            self._policy.check(target.host, ip, target.port, literal=target.literal is not None)
        return [
            ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip for ip in found
        ]

    async def _send(
        self,
        method: str,
        target: Target,
        content: bytes | None,
        headers: Mapping[str, str],
        max_bytes: int,
        truncate: bool,
    ) -> OutboundResponse:
        addresses = await self._addresses(target)
        extensions: dict[str, str] = {}
        if target.scheme == "https" and target.literal is None:
            extensions["sni_hostname"] = target.host
        failure: Exception | None = None
        for ip in addresses[:_MAX_ADDRESSES]:
            request = self._client.build_request(
                method,
                target.url_for(ip),
                headers={**headers, "Host": target.host_header},
                content=content,
                extensions=extensions,
            )
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc  # the next address may answer
                continue
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"{target.url}: {_describe(exc)}.") from exc
            try:
                body = await _read_body(response, max_bytes, truncate, target.url)
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"{target.url}: {_describe(exc)}.") from exc
            finally:
                await response.aclose()
            return OutboundResponse(
                url=target.url,
                status=response.status_code,
                headers=response.headers,
                content=body,
                address=str(ip),
            )
        assert failure is not None
        raise UrlFetchFailed(f"{target.url} could not be reached: {_describe(failure)}.")


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, httpx.ReadTimeout):
        return "the server stopped sending (read timeout)"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


async def _read_body(response: httpx.Response, max_bytes: int, truncate: bool, url: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > max_bytes:
        raise UrlTooLarge(f"{url} declares {declared} bytes; the limit is {max_bytes}.")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity") and not truncate:
        raise UrlFetchFailed(f"{url} sent its body {encoding}-encoded, which was not asked for.")
    body = bytearray()
    # The bytes as sent, never inflated here: what is counted is what is held (a reply to a
    # webhook that is compressed anyway is kept as it came, cut at the limit).
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_bytes:
            if truncate:
                del body[max_bytes:]
                break
            raise UrlTooLarge(f"{url} sent more than {max_bytes} bytes.")
    return bytes(body)
