from __future__ import annotations

import ipaddress

import pytest

from bgsvc.errors import UrlForbidden
from bgsvc.outbound.policy import (
    AllowList,
    OutboundPolicy,
    parse_ip_literal,
    refusal_reason,
)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("fe80::1%25eth0", "fe80::1"),
    ],
)
def test_odd_spellings_are_read_as_the_c_resolver_reads_them(host: str, address: str) -> None:
    assert parse_ip_literal(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "cafe.babe", "1.2.3.4.5", "08.0.0.1", "a1"])
def test_names_are_not_taken_for_addresses(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.31.0.1", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.100.100.200", "CGNAT"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.9", "documentation"),
        ("198.19.0.1", "benchmarking"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd00::1", "unique local"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("::ffff:10.0.0.1", "private, as IPv4-mapped"),
        ("::ffff:169.254.169.254", "link-local (cloud metadata), as IPv4-mapped"),
        ("::127.0.0.1", "loopback, as IPv4-compatible"),
        ("2002:a9fe:a9fe::", "link-local (cloud metadata), as 6to4"),
        ("64:ff9b::7f00:1", "loopback, as NAT64"),
        ("64:ff9b:1::808:808", "local-use NAT64"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("5f00::1", "SRv6"),
    ],
)
def test_special_ranges_are_refused_with_their_name(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::",
    ],
)
def test_public_addresses_and_their_ipv6_forms_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_allow_rules_open_exactly_what_they_name() -> None:
    allow = AllowList.parse(
        " 127.0.0.1:9000, hooks.internal ,10.1.0.0/16,[::1]:8443, Receiver.Example.:80,"
    )
    ip = ipaddress.ip_address
    assert allow.allows("127.0.0.1", ip("127.0.0.1"), 9000)
    assert not allow.allows("127.0.0.1", ip("127.0.0.1"), 9001)
    assert allow.allows("127.0.0.1", ip("::ffff:127.0.0.1"), 9000)
    assert allow.allows("hooks.internal", ip("10.9.9.9"), 443)
    assert not allow.allows("other.internal", ip("10.9.9.9"), 443)
    assert allow.allows("anything", ip("10.1.200.3"), 1)
    assert allow.allows("::1", ip("::1"), 8443)
    assert not allow.allows("::1", ip("::1"), 80)
    assert allow.allows("receiver.example", ip("192.168.1.1"), 80)


@pytest.mark.parametrize(
    "entry", ["127.0.0.1:0", "host:http", "10.0.0.0/33", "10.0.0.0/8:80", "bad host", "[::1]x"]
)
def test_malformed_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="BGSVC_OUTBOUND_ALLOW"):
        AllowList.parse(entry)


def test_a_refused_name_does_not_reveal_the_internal_address() -> None:
    policy = OutboundPolicy()
    with pytest.raises(UrlForbidden) as caught:
        policy.check("db.internal", ipaddress.ip_address("10.20.30.40"), 80, literal=False)
    assert "private" in caught.value.message and "10.20.30.40" not in caught.value.message
    assert caught.value.code == "url_forbidden" and caught.value.status == 400
