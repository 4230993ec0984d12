"""deploy/nginx/nginx.conf: real `nginx -t`, and its failover rules against stub nodes."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bgsvc.auth.addresses import client_address, parse_networks
from bgsvc.cluster.nginx import FloodGuard, TlsListen
from bgsvc.cluster.tls import make_run_certificates
from bgsvc.config import Settings

from .conftest import require_tool
from .nginx_render import NGINX_CONF, backup_servers, render, upstream_servers

SYNC_PATHS = ["/remove-background", "/api/remove", "/v1.0/removebg"]
TEXT = NGINX_CONF.read_text()


def _block(text: str, header_regex: str) -> str:
    """Body of the first `{ ... }` block whose header matches (no nested blocks needed)."""
    match = re.search(header_regex + r"\s*\{(?P<body>[^{}]*)\}", text)
    assert match, f"no block matching {header_regex!r}"
    return match["body"]


def _nginx_t(conf: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    nginx = require_tool("nginx", "nginx")
    (prefix / "logs").mkdir(exist_ok=True)
    (prefix / "temp").mkdir(exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return subprocess.run(
        [nginx, "-t", "-p", f"{prefix}/", "-c", str(path), "-e", str(prefix / "logs/error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_compose_config_passes_nginx_t_once_node_names_resolve(tmp_path: Path) -> None:
    # Compose's bgsvc-N names only resolve inside the Compose network: swap in
    # loopback addresses, a writable temp dir and a certificate, keep everything else.
    servers = [f"127.0.0.{i + 1}:8000" for i in range(len(upstream_servers(TEXT)))]
    files = make_run_certificates(tmp_path / "tls", ("127.0.0.1",))
    tls = TlsListen(cert=str(files.cert), key=str(files.key))
    conf = render(TEXT, servers, temp_dir=str(tmp_path / "temp"), tls=tls)
    assert "listen 80;" in conf and "/dev/stdout" in conf
    assert "listen 443 ssl http2;" in conf
    assert "return 301 https://$host$request_uri;" in conf
    result = _nginx_t(conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_local_render_passes_nginx_t_and_changes_only_marked_lines(tmp_path: Path) -> None:
    conf = render(
        TEXT,
        ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"],
        listen="127.0.0.1:8080",
        pid="nginx.pid",
        error_log="logs/error.log",
        access_log="logs/access.log",
        temp_dir="temp",
    )
    result = _nginx_t(conf, tmp_path)
    assert result.returncode == 0, result.stderr
    nodes = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"]
    assert re.findall(r"server (127\.0\.0\.1:800\d) max_fails=3 fail_timeout=2s;", conf) == nodes
    assert re.findall(r"server (127\.0\.0\.1:800\d) backup max_fails=0;", conf) == nodes
    directives = "\n".join(line.split("#")[0] for line in conf.splitlines())
    assert "bgsvc-1" not in directives and "/var/cache/nginx" not in directives
    assert "access_log logs/access.log bgsvc;" in conf
    # Apart from the marked lines, the two files are identical.
    changed = {line.strip() for line in TEXT.splitlines()} - {
        line.strip() for line in conf.splitlines()
    }
    tags = "LISTEN|LISTEN_TLS|TLS|TLS_CERT|TLS_KEY|REDIRECT|PID|ERROR_LOG|ACCESS_LOG|TEMP"
    assert all(
        re.search(rf"# ({tags})$", line) or line.startswith("server ") for line in changed
    ), changed
    # Without TLS asked for, nothing of it is left: plain HTTP serves every route.
    assert "ssl" not in directives and "301" not in directives


def test_upstream_balances_by_least_connections_with_passive_health_and_keepalive() -> None:
    body = _block(TEXT, r"upstream\s+bgsvc")
    assert re.search(r"^\s*least_conn;", body, re.M)
    assert re.search(r"^\s*keepalive \d+;", body, re.M)
    servers = upstream_servers(TEXT)
    assert [addr for addr, _ in servers] == ["bgsvc-1:8000", "bgsvc-2:8000", "bgsvc-3:8000"]
    for _, params in servers:
        # More than one failure: a single reset on a reused connection keeps a node in.
        fails = re.search(r"max_fails=(\d+)", params)
        assert fails and int(fails[1]) > 1 and re.search(r"fail_timeout=\d+s", params)
    # The same nodes as backups that are never marked failed: the fleet never answers
    # 502 "no live upstreams" while a node can still answer.
    assert backup_servers(TEXT) == [(addr, "backup max_fails=0") for addr, _ in servers]
    # Upstream keepalive only works over HTTP/1.1 with the Connection header cleared.
    assert "proxy_http_version 1.1;" in TEXT
    assert 'proxy_set_header Connection "";' in TEXT


def test_sync_endpoints_fail_over_on_dead_or_loading_nodes_but_never_on_429() -> None:
    header = r"location ~ \^/\(\?:remove-background\|api/remove\|v1\\\.0/removebg\)\$"
    body = _block(TEXT, header)
    next_upstream = re.search(r"proxy_next_upstream ([^;]+);", body)
    assert next_upstream
    conditions = set(next_upstream[1].split())
    assert {"error", "timeout", "http_502", "http_503", "non_idempotent"} <= conditions
    assert not conditions & {"http_429", "http_504", "http_500", "http_404", "http_403"}
    assert re.search(r"proxy_next_upstream_tries 4;", body)
    assert re.search(r"proxy_request_buffering on;", body)
    # No other location retries POSTs or treats a 429 as a failure.
    assert TEXT.count("non_idempotent") == 1
    assert "http_429" not in TEXT


def test_limits_and_timeouts_match_the_service_settings() -> None:
    # The defaults, not the environment: the deploy files run with the defaults.
    fields = Settings.model_fields
    size = re.search(r"client_max_body_size (\d+)m;", TEXT)
    assert size and int(size[1]) * 1024 * 1024 == fields["max_upload_bytes"].default
    read = re.search(r"proxy_read_timeout (\d+)s;", TEXT)
    assert read and int(read[1]) > fields["request_timeout_s"].default


# --- behaviour against stub nodes ------------------------------------------------


class StubNode:
    """A fake service node answering every request with a fixed status."""

    def __init__(self, name: str, status: int | Callable[[str], int]) -> None:
        self.name = name
        self.status = status
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, X-Request-ID
        self.forwarded_for: list[list[str]] = []  # each request's X-Forwarded-For headers
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                node.requests.append((self.command, self.path, self.headers.get("X-Request-ID")))
                node.forwarded_for.append(self.headers.get_all("X-Forwarded-For") or [])
                status = node.status(self.path) if callable(node.status) else node.status
                if status == 0:
                    # Drop the connection unanswered, as a node closing it under
                    # nginx's feet (or dying) does.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = node.name.encode()
                self.send_response(status)
                self.send_header("X-Served-By", node.name)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dead_address() -> str:
    # A port nothing listens on: connections are refused, as for a killed node.
    return f"127.0.0.1:{_free_port()}"


class Balancer:
    """Debian's nginx with the rendered config; ``tls``: also HTTPS on ``tls_port``."""

    def __init__(
        self,
        prefix: Path,
        upstreams: list[str],
        tls: bool = False,
        flood: FloodGuard | None = None,
    ) -> None:
        nginx = require_tool("nginx", "nginx")
        self.port = _free_port()
        self.tls_port = _free_port() if tls else None
        self.prefix = prefix
        for sub in ("logs", "temp"):
            (prefix / sub).mkdir(exist_ok=True)
        self.tls_files = make_run_certificates(prefix / "tls", ("127.0.0.1",)) if tls else None
        listen_tls = None
        if self.tls_files is not None:
            listen_tls = TlsListen(
                cert=str(self.tls_files.cert),
                key=str(self.tls_files.key),
                listen=f"127.0.0.1:{self.tls_port}",
                https_port=self.tls_port or 443,
            )
        conf = render(
            TEXT,
            upstreams,
            listen=f"127.0.0.1:{self.port}",
            pid="nginx.pid",
            error_log="logs/error.log",
            access_log="logs/access.log",
            temp_dir="temp",
            tls=listen_tls,
            flood=flood,
        )
        (prefix / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(
            [
                nginx,
                "-p",
                f"{prefix}/",
                "-c",
                str(prefix / "nginx.conf"),
                "-e",
                str(prefix / "logs/error.log"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body or None, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def stub_fleet(tmp_path: Path) -> Iterator[Callable[..., Balancer]]:
    started: list[Balancer] = []

    def start(upstreams: list[str], **options: object) -> Balancer:
        balancer = Balancer(tmp_path, upstreams, **options)  # type: ignore[arg-type]
        started.append(balancer)
        return balancer

    yield start
    for balancer in started:
        balancer.stop()


@pytest.fixture
def nodes() -> Iterator[Callable[[str, int | Callable[[str], int]], StubNode]]:
    made: list[StubNode] = []

    def make(name: str, status: int | Callable[[str], int]) -> StubNode:
        node = StubNode(name, status)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


@pytest.mark.parametrize("path", SYNC_PATHS)
def test_sync_post_reaches_a_live_node_when_others_are_dead_or_loading(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode], path: str
) -> None:
    loading = nodes("loading", 503)
    live = nodes("live", 200)
    balancer = stub_fleet([_dead_address(), loading.address, live.address])
    results = [balancer.request("POST", path, b"image-bytes") for _ in range(12)]
    assert [status for status, _, _ in results] == [200] * 12
    assert {headers["X-Served-By"] for _, headers, _ in results} == {"live"}


def test_nodes_all_marked_failed_are_still_tried_instead_of_an_immediate_502(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    # Each node answers 503 three times (max_fails), then 200: after the first requests
    # every primary entry is marked failed for fail_timeout, as after a burst of resets.
    def flapping(node: list[int]) -> Callable[[str], int]:
        def status(_: str) -> int:
            node[0] += 1
            return 503 if node[0] <= 3 else 200

        return status

    a, b = nodes("a", flapping([0])), nodes("b", flapping([0]))
    balancer = stub_fleet([a.address, b.address])
    statuses = [balancer.request("POST", "/remove-background", b"x")[0] for _ in range(6)]
    assert len(a.requests) >= 3 and len(b.requests) >= 3
    # Without the backup entries these would be 502 "no live upstreams" for 2 s.
    assert 502 not in statuses
    assert statuses[-4:] == [200] * 4


def test_one_dropped_connection_keeps_a_healthy_node_in_rotation(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    answers = [0]

    def drops_once(_: str) -> int:
        answers[0] += 1
        return 0 if answers[0] == 1 else 200

    flaky, steady = nodes("flaky", drops_once), nodes("steady", 200)
    balancer = stub_fleet([flaky.address, steady.address])
    statuses = [balancer.request("POST", "/remove-background", b"x")[0] for _ in range(10)]
    assert statuses == [200] * 10  # the dropped request was re-sent to the other node
    # With max_fails=1 the flaky node would sit out fail_timeout (2 s) and serve none of
    # these; it stays in and takes its share.
    assert len(flaky.requests) >= 4


def test_429_reaches_the_client_unretried_and_keeps_the_node_in_rotation(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    busy = nodes("busy", 429)
    live = nodes("live", 200)
    balancer = stub_fleet([busy.address, live.address])
    statuses = [balancer.request("POST", "/remove-background", b"x")[0] for _ in range(10)]
    # Every request went to exactly one node: a 429 was not re-sent elsewhere.
    assert statuses.count(429) == len(busy.requests)
    assert statuses.count(200) == len(live.requests)
    assert len(busy.requests) + len(live.requests) == 10
    # Had a 429 counted as a failure (max_fails=3), the busy node would have been
    # taken out for fail_timeout after its third answer.
    assert len(busy.requests) >= 4


def test_post_outside_the_sync_endpoints_is_not_resent_after_a_503(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    loading = nodes("loading", 503)
    live = nodes("live", 200)
    balancer = stub_fleet([loading.address, live.address])
    statuses = [balancer.request("POST", "/jobs", b"x")[0] for _ in range(4)]
    assert 503 in statuses
    assert len(loading.requests) + len(live.requests) == 4


def test_health_is_answered_by_nginx_even_with_every_node_down(
    stub_fleet: Callable[..., Balancer],
) -> None:
    balancer = stub_fleet([_dead_address(), _dead_address()])
    status, _, body = balancer.request("GET", "/health")
    assert status == 200 and b'"ok"' in body
    assert balancer.request("GET", "/remove-background")[0] == 502


def test_ready_is_200_when_any_node_is_ready(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    loading_a = nodes("loading-a", 503)
    loading_b = nodes("loading-b", 503)
    ready = nodes("ready", 200)
    balancer = stub_fleet([loading_a.address, loading_b.address, ready.address])
    assert [balancer.request("GET", "/ready")[0] for _ in range(5)] == [200] * 5


def test_ready_is_503_when_no_node_is_ready(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    balancer = stub_fleet([nodes("a", 503).address, nodes("b", 503).address])
    assert balancer.request("GET", "/ready")[0] == 503


def test_metrics_are_not_exposed_through_the_balancer(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    node = nodes("n", 200)
    balancer = stub_fleet([node.address])
    assert balancer.request("GET", "/metrics")[0] == 404
    assert node.requests == []


def test_nodes_are_told_the_clients_address_and_not_what_the_client_claims(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    node = nodes("n", 200)
    balancer = stub_fleet([node.address])
    forged = {"X-Forwarded-For": "203.0.113.66, 198.51.100.9"}
    assert balancer.request("GET", "/models", headers=forged)[0] == 200
    assert node.forwarded_for[-1] == ["127.0.0.1"]
    # What a node believing only this balancer (BGSVC_TRUSTED_PROXIES) makes of it.
    trusted = parse_networks("127.0.0.1")
    assert client_address("127.0.0.1", node.forwarded_for[-1][0], trusted) == "127.0.0.1"


def test_request_id_is_kept_when_sent_and_generated_when_absent(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    node = nodes("n", 200)
    balancer = stub_fleet([node.address])
    _, headers, _ = balancer.request("POST", "/api/remove", b"x", {"X-Request-ID": "req-abc"})
    assert headers.get_all("X-Request-ID") == ["req-abc"]
    assert node.requests[-1][2] == "req-abc"

    _, headers, _ = balancer.request("POST", "/api/remove", b"x")
    generated = headers.get_all("X-Request-ID")
    assert generated and re.fullmatch(r"[0-9a-f]{32}", generated[0])
    assert node.requests[-1][2] == generated[0]


def test_upload_over_the_service_limit_is_refused_by_nginx(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    node = nodes("n", 200)
    balancer = stub_fleet([node.address])
    limit = Settings.model_fields["max_upload_bytes"].default
    with socket.create_connection(("127.0.0.1", balancer.port), timeout=10) as s:
        s.sendall(
            b"POST /remove-background HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {limit + 1}\r\n\r\n".encode()
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert node.requests == []


def test_access_log_names_the_node_and_its_timings(
    stub_fleet: Callable[..., Balancer], nodes: Callable[..., StubNode]
) -> None:
    node = nodes("n", 200)
    balancer = stub_fleet([node.address])
    balancer.request("POST", "/remove-background", b"x", {"X-Request-ID": "log-me"})
    balancer.stop()  # flushes and closes the log
    line = (balancer.prefix / "logs/access.log").read_text().strip().splitlines()[-1]
    assert "rid=log-me" in line
    assert f"upstream={node.address}" in line
    assert "upstream_status=200" in line
    assert re.search(r"upstream_response_time=\d+\.\d{3}", line)
    assert re.search(r"request_time=\d+\.\d{3}", line)
