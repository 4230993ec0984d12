"""deploy/nginx/nginx.conf at the edge: the per-address flood guard against stub nodes,
and the shipped TLS and guard settings matching the service's settings."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from bgsvc.cluster.nginx import FloodGuard
from bgsvc.config import Settings

from .test_nginx import TEXT, Balancer, StubNode, nodes, stub_fleet

__all__ = ["nodes", "stub_fleet"]  # fixtures shared with test_nginx


def test_a_burst_beyond_the_guard_is_answered_429_by_nginx_not_by_a_node(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    node = nodes("n", 200)
    # One request per second sustained, 3 more at once: a quick burst of 12 from one
    # address gets at most 4 through, whatever the machine's speed.
    balancer = stub_fleet([node.address], flood=FloodGuard(rate_per_s=1, burst=3))
    answers = [balancer.request("POST", "/remove-background", b"x") for _ in range(12)]
    statuses = [status for status, _, _ in answers]
    assert statuses[0] == 200
    assert 1 <= statuses.count(200) <= 4 + 1  # + one token if a second passed meanwhile
    assert statuses.count(429) == 12 - statuses.count(200)
    # Only the admitted requests reached the node; the 429s are nginx's own.
    assert len(node.requests) == statuses.count(200)
    for status, headers, body in answers:
        if status != 429:
            continue
        assert headers["X-Served-By"] is None
        assert headers["Retry-After"] == "1"
        assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"] or "")
        error = json.loads(body)
        assert error["code"] == "rate_limited" and error["scope"] == "address"
    # nginx's own /health is never limited, even for an address over its rate.
    assert balancer.request("GET", "/health")[0] == 200


def test_traffic_under_the_guard_passes_untouched(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    node = nodes("n", 200)
    balancer = stub_fleet([node.address])  # the shipped guard: 100/s, burst 200
    statuses = [balancer.request("POST", "/api/remove", b"x")[0] for _ in range(150)]
    assert statuses == [200] * 150
    assert len(node.requests) == 150


def test_a_nodes_own_429_passes_through_unchanged_and_unretried(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    busy = nodes("busy", 429)
    balancer = stub_fleet([busy.address])
    status, headers, body = balancer.request("POST", "/remove-background", b"x")
    # The per-key limits' answer keeps its node, body and headers: error_page only
    # rewrites nginx's own 429.
    assert (status, headers["X-Served-By"], body) == (429, "busy", b"busy")
    assert len(busy.requests) == 1


def test_shipped_guard_and_tls_settings_match_the_service_defaults() -> None:
    fields = Settings.model_fields
    zone = re.search(r"limit_req_zone \$binary_remote_addr zone=(\w+):\S+ rate=(\d+)r/s;", TEXT)
    assert zone and int(zone[2]) == fields["edge_rate_per_s"].default
    guard = re.search(rf"limit_req zone={zone[1]} burst=(\d+) nodelay;", TEXT)
    assert guard and int(guard[1]) == fields["edge_burst"].default
    assert "limit_req_status 429;" in TEXT
    assert re.search(r"^\s*ssl_protocols TLSv1\.2 TLSv1\.3;", TEXT, re.M)
    ciphers = re.search(r"^\s*ssl_ciphers ([^;]+);", TEXT, re.M)
    assert ciphers
    # Forward secrecy and AEAD only: no RSA key exchange, no CBC, no SHA-1 MACs.
    for suite in ciphers[1].split(":"):
        assert suite.startswith("ECDHE-") and ("GCM" in suite or "CHACHA20" in suite), suite
    assert "ssl_session_tickets off;" in TEXT
    assert re.search(r'on\s+"max-age=63072000";', TEXT)
