"""A URL taken apart once, so that the host checked is the host connected to."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from bgsvc.errors import UrlForbidden, UrlInvalid
from bgsvc.outbound.policy import IPAddress, parse_ip_literal

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Parsers disagree on these (WHATWG reads "\" as "/"; some stop at whitespace); a URL that
# contains them is refused rather than read one way and fetched another.
_AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Target:
    """Where a request goes: scheme, the host as checked (an ASCII name, or the canonical
    address for a literal), the port, and the path with its query."""

    url: str
    scheme: str
    host: str
    port: int
    literal: IPAddress | None
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    def url_for(self, ip: IPAddress) -> httpx.URL:
        """The request URL with the checked address in place of the host, so that nothing
        resolves the name a second time."""
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return httpx.URL(f"{self.scheme}://{host}:{self.port}{self.path}")

    def join(self, location: str) -> Target:
        """The target of a redirect's Location, relative to this URL."""
        return parse_target(urljoin(self.url, location))


def parse_target(url: str) -> Target:
    """Parse ``url``; UrlInvalid when it cannot be read, UrlForbidden for a scheme other
    than http or https."""
    if _AMBIGUOUS.search(url):
        raise UrlInvalid("The URL contains whitespace, control characters or a backslash.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlInvalid(f"The URL cannot be parsed: {exc}.") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UrlForbidden(f"Scheme {scheme or '(none)'!r} refused; use http or https.")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise UrlInvalid("The URL has no host.")
    if port == 0:
        raise UrlInvalid("The URL's port is 0.")
    literal = parse_ip_literal(raw_host)
    if literal is not None:
        host = str(literal)
    else:
        try:
            # httpx's own IDNA encoding: the name is sent (Host, SNI) the way httpx would.
            raw = httpx.URL(f"http://{raw_host}/").raw_host
        except httpx.InvalidURL as exc:
            raise UrlInvalid(f"The URL's host cannot be read: {exc}.") from exc
        host = raw.decode("ascii").lower().removesuffix(".")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    target = Target(
        url=url,
        scheme=scheme,
        host=host,
        port=port or _DEFAULT_PORTS[scheme],
        literal=literal,
        path=path,
    )
    try:
        target.url_for(ipaddress.IPv4Address(0))  # what httpx refuses is refused here, as 400
    except httpx.InvalidURL as exc:
        raise UrlInvalid(f"The URL cannot be parsed: {exc}.") from exc
    return target
