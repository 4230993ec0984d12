"""Which addresses outbound requests may reach: public unicast only, unless allow-listed.

Python's ``ipaddress.is_global`` is the last word but not the first: its tables lag the IANA
registries (3fff::/20, 5f00::/16 and 64:ff9b:1::/48 count as global in 3.11) and it looks
through none of the IPv6 forms that carry an IPv4 address. So the ranges are named here, the
embedded IPv4 of mapped, compatible, 6to4 and NAT64 addresses is checked as IPv4, and
``is_global`` only catches what the table forgot.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from bgsvc.errors import UrlForbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# First match wins, so the narrow, telling labels come before the wide ones.
_REFUSED: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("0.0.0.0/32"), "unspecified"),
    (_V4("0.0.0.0/8"), "reserved ('this network')"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "shared (CGNAT)"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local (cloud metadata)"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "reserved (IETF protocol assignments)"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.88.99.0/24"), "reserved (6to4 relay anycast)"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved"),
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("::/8"), "reserved"),
    (_V6("100::/64"), "reserved (discard-only)"),
    (_V6("2001::/32"), "Teredo tunnel"),
    (_V6("2001:2::/48"), "benchmarking"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("2001::/23"), "reserved (IETF protocol assignments)"),
    (_V6("3fff::/20"), "documentation"),
    (_V6("5f00::/16"), "reserved (SRv6 SIDs)"),
    (_V6("fc00::/7"), "private (unique local)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "reserved (site-local)"),
    (_V6("ff00::/8"), "multicast"),
)

_NAT64 = _V6("64:ff9b::/96")
_IPV4_COMPATIBLE = _V6("::/96")
# The shapes inet_aton reads as an address: 1 to 4 parts, decimal, octal or hex.
_NUMERIC_HOST = re.compile(
    r"[0-9]+|0[xX][0-9a-fA-F]*|(?:(?:[0-9]+|0[xX][0-9a-fA-F]*)\.){1,3}"
    r"(?:[0-9]+|0[xX][0-9a-fA-F]*)"
)
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None for a name.

    IPv4 is read as the C resolver reads it (``inet_aton``): ``2130706433``, ``0177.0.0.1``,
    ``0x7f.1`` and ``127.1`` are all 127.0.0.1, so they must be checked as 127.0.0.1 and not
    waved through as names.
    """
    text = host.strip("[]")
    if "%" in text:  # an IPv6 zone (fe80::1%eth0, or %25 as URLs write it)
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    text = text.removesuffix(".")
    if not _NUMERIC_HOST.fullmatch(text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-compatible"
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be reached (e.g. ``"loopback"``), or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner, form = embedded
            reason = refusal_reason(inner)
            if reason is not None:
                return f"{reason}, as {form} {inner}"
            if form in ("IPv4-mapped", "NAT64"):
                return None  # as reachable as the public IPv4 address it carries
    for network, label in _REFUSED:
        if ip.version == network.version and ip in network:
            return label
    if not ip.is_global:
        return "not globally reachable"
    return None


@dataclass(frozen=True)
class AllowRule:
    """One BGSVC_OUTBOUND_ALLOW entry: a host name or a network, optionally one port."""

    name: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def matches(self, host: str, ip: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.name is not None:
            return self.name == host
        assert self.network is not None
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c.version == self.network.version and c in self.network for c in candidates)


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"BGSVC_OUTBOUND_ALLOW entry {entry!r}: bad port {text!r}")
    return int(text)


def _parse_rule(entry: str) -> AllowRule:
    host, port = entry, None
    if entry.startswith("["):  # [v6] or [v6]:port
        inside, _, rest = entry[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"BGSVC_OUTBOUND_ALLOW entry {entry!r}: expected [v6]:port")
            port = _port(rest[1:], entry)
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = _port(port_text, entry)
    if "/" in host:
        if port is not None:
            raise ValueError(f"BGSVC_OUTBOUND_ALLOW entry {entry!r}: a network takes no port")
        try:
            return AllowRule(network=ipaddress.ip_network(host, strict=False))
        except ValueError as exc:
            raise ValueError(f"BGSVC_OUTBOUND_ALLOW entry {entry!r}: {exc}") from exc
    literal = parse_ip_literal(host)
    if literal is not None:
        return AllowRule(network=ipaddress.ip_network(literal), port=port)
    name = host.lower().removesuffix(".")
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"BGSVC_OUTBOUND_ALLOW entry {entry!r}: not a host, host:port or CIDR")
    return AllowRule(name=name, port=port)


@dataclass(frozen=True)
class AllowList:
    """The exceptions to the policy (BGSVC_OUTBOUND_ALLOW)."""

    rules: tuple[AllowRule, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """``host``, ``host:port``, ``ip``, ``ip:port``, ``[v6]:port`` or ``cidr``, comma-
        separated. A name rule lets that name reach whatever it resolves to; an address or
        network rule lets any name reach those addresses. Raises ValueError."""
        return cls(tuple(_parse_rule(e.strip()) for e in text.split(",") if e.strip()))

    def allows(self, host: str, ip: IPAddress, port: int) -> bool:
        return any(rule.matches(host, ip, port) for rule in self.rules)


@dataclass(frozen=True)
class OutboundPolicy:
    """The check every outbound connection passes, address by address."""

    allow: AllowList = AllowList()

    def check(self, host: str, ip: IPAddress, port: int, *, literal: bool) -> None:
        """Raise UrlForbidden unless ``host`` (port ``port``) may be reached at ``ip``.

        For a name, the message names the kind of range and not the address, so the service
        is no oracle for internal DNS."""
        if self.allow.allows(host, ip, port):
            return
        reason = refusal_reason(ip)
        if reason is None:
            return
        if literal:
            raise UrlForbidden(f"{ip} is {reason}; outbound requests go to public addresses.")
        raise UrlForbidden(
            f"{host} resolves to an address that is {reason}; outbound requests go to "
            "public addresses."
        )
