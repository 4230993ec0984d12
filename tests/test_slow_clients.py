"""Slow and abusive clients against a real node (`bgsvc serve`, and one gunicorn node) on
loopback: they never hold a place past their deadline, and /health keeps answering fast.

Short limits for the run: bodies 2 s, heads 1 s, heads 8 KiB, 16 connections. Every
exchange is bounded in count and time; the latency bound on /health is the contract
under attack (BGSVC's own timings are never asserted)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import encode_image, subject_image
from tests.models import TINY_SIZE
from tests.procs import running_node
from tests.zips import directory_zip

BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 8192
MAX_CONNECTIONS = 16
HEALTH_P99_S = 0.100
# How long a client waits for what the server must do within the limits above.
GENEROUS_S = 10.0


def guard_env(model: Path, tmp: Path) -> dict[str, str]:
    return {
        "BGSVC_MODEL_DIR": str(tmp / "models"),
        "BGSVC_DATA_DIR": str(tmp / "data"),
        "BGSVC_CUSTOM_MODELS": json.dumps(
            {"tiny": {"path": str(model), "profile": "imgly", "input_size": TINY_SIZE}}
        ),
        "BGSVC_DEFAULT_MODEL": "tiny",
        "BGSVC_LOG_LEVEL": "warning",
        "BGSVC_INTRA_OP_THREADS": "1",
        "BGSVC_DRAIN_SECONDS": "0",
        "BGSVC_BODY_READ_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "BGSVC_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "BGSVC_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "BGSVC_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, alive: Callable[[], bool], log: Path | None = None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
    raise AssertionError(f"{url} did not become ready\n{tail}")


@dataclass
class Node:
    url: str
    port: int


@contextlib.contextmanager
def serving(model: Path, tmp: Path, **overrides: str) -> Iterator[Node]:
    """`bgsvc serve` (one process, no gunicorn) with the short limits, and ``overrides``."""
    port = free_port()
    env = {**os.environ, **guard_env(model, tmp), **overrides}
    env.update({"BGSVC_HOST": "127.0.0.1", "BGSVC_PORT": str(port)})
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgsvc", "serve"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, lambda: proc.poll() is None, log)
        yield Node(url, port)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def node(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with serving(tiny_model_path, tmp_path_factory.mktemp("slow-clients")) as started:
        yield started


# --- Raw HTTP/1.1 on sockets: what a hostile client sends. ---------------------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, lower-cased headers, body); the body by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket, within: float = GENEROUS_S) -> bool:
    """True once the server closes (EOF or reset) within ``within`` seconds; whatever it
    sends first (an error response) is read and dropped."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def get(sock: socket.socket, path: str = "/health") -> tuple[int, dict[str, str], bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return read_response(sock)


# --- /health under attack -------------------------------------------------------------------


class HealthProbe:
    """GET /health from its own thread every ``every`` seconds, at most ``limit`` times,
    until stopped; latencies as the client sees them."""

    def __init__(self, url: str, every: float = 0.02, limit: int = 400) -> None:
        self.url, self.every, self.limit = url, every, limit
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=GENEROUS_S) as client:
            while not self._stop.is_set() and len(self.latencies) < self.limit:
                started = time.perf_counter()
                status = client.get(f"{self.url}/health").status_code
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(status)
                self._stop.wait(self.every)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(GENEROUS_S)

    def slowest(self) -> str:
        """The five slowest probes with their position in the run: enough to tell a stall at
        the upload's start from one at its end when the bound fails."""
        ranked = sorted(enumerate(self.latencies), key=lambda pair: pair[1])[-5:]
        shown = ", ".join(f"#{i}: {seconds * 1000:.1f} ms" for i, seconds in ranked)
        return f"{len(self.latencies)} probes; slowest {shown}"

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# --- The tests ------------------------------------------------------------------------------


def test_idle_connections_make_room_for_a_request_the_longest_idle_first(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    # Kept-alive connections stay open (75 s) and cost their client nothing to hold: at the
    # limit, a request is served in place of the connection idle the longest. A node of its
    # own: another test's idle connection would be the longest idle.
    with serving(tiny_model_path, tmp_path) as own:
        held = [connect(own.port) for _ in range(MAX_CONNECTIONS)]
        try:
            assert [get(sock)[0] for sock in held] == [200] * MAX_CONNECTIONS
            # The first one becomes the most recently idle: the second is now the oldest.
            assert get(held[0])[0] == 200
            with connect(own.port) as extra:
                assert get(extra, "/models")[0] == 200
            assert closed_by_server(held[1])
            assert get(held[0])[0] == 200
        finally:
            for sock in held:
                sock.close()


def busy(sock: socket.socket) -> socket.socket:
    """``sock`` with a request answered before its announced body is in: not idle, until
    the node's deadline for the rest (the header timeout), which its node sets long."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nx")
    assert read_response(sock)[0] == 200
    return sock


def test_connections_beyond_the_limit_get_503_and_are_closed_when_none_is_idle(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    limit = 4
    with serving(
        tiny_model_path,
        tmp_path,
        BGSVC_MAX_CONNECTIONS=str(limit),
        BGSVC_HEADER_TIMEOUT_S="60",
        BGSVC_BODY_READ_TIMEOUT_S="60",
    ) as small:
        held = [busy(connect(small.port)) for _ in range(limit)]
        try:
            extra = connect(small.port)
            try:
                status, headers, body = get(extra, "/models")
                assert (status, json.loads(body)["code"]) == (503, "too_many_connections")
                assert headers["retry-after"] == "1" and headers["connection"] == "close"
                assert closed_by_server(extra)
            finally:
                extra.close()
            # Probes are answered past the limit: a flood must not get a live node restarted.
            with connect(small.port) as probe:
                assert get(probe, "/health")[0] == 200
            held.pop().close()
            # A place freed (once the node has seen the close): the next connection is served.
            statuses = []
            deadline = time.monotonic() + GENEROUS_S
            while 200 not in statuses and time.monotonic() < deadline:
                with connect(small.port) as again:
                    statuses.append(get(again, "/models")[0])
            assert statuses[-1] == 200
        finally:
            for sock in held:
                sock.close()


def test_a_header_over_the_limit_gets_431_or_a_closed_connection(node: Node) -> None:
    with connect(node.port) as sock:
        big = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (8 * MAX_HEADER_BYTES)
        try:
            sock.sendall(big + b"\r\n\r\n")
            status, _, body = read_response(sock)
        except (ConnectionError, OSError):
            status, body = 0, b""  # closed while sending: also a refusal
        assert status in (0, 431)
        if status:
            assert json.loads(body)["code"] == "headers_too_large"
        assert closed_by_server(sock)
    with connect(node.port) as sock:  # a head just under the limit still passes
        head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES // 2)
        sock.sendall(head + b"\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_silent_and_half_sent_heads_are_closed_within_the_header_timeout(node: Node) -> None:
    with connect(node.port) as silent, connect(node.port) as half:
        half.sendall(b"POST /remove-background HTTP/1.1\r\nHost: t\r\nContent-Le")
        started = time.monotonic()
        assert closed_by_server(silent, GENEROUS_S)
        status, _, body = read_response(half)
        assert (status, json.loads(body)["code"]) == (408, "header_timeout")
        assert closed_by_server(half, GENEROUS_S)
        # Generous: the limit is 1 s; a node without one keeps both open indefinitely.
        assert time.monotonic() - started < GENEROUS_S
    with connect(node.port) as kept:  # a kept-alive connection idles without a head timer
        assert get(kept)[0] == 200
        time.sleep(HEADER_TIMEOUT_S * 1.5)
        assert get(kept)[0] == 200


def test_a_body_dripped_after_its_answer_cannot_hold_the_connection(node: Node) -> None:
    # No key needed: /health (or any 401) answers at once, and the client drips the body
    # it announced; each byte used to cancel the node's only remaining timer.
    with connect(node.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        sock.settimeout(0.2)
        closed = False
        while not closed and time.monotonic() - started < GENEROUS_S:
            try:
                sock.sendall(b"x")
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed = True
        assert closed


def slow_upload(port: int, every: float = 0.25) -> tuple[int, str]:
    """POST /remove-background announcing 100 kB and sending one byte per ``every``
    seconds until the server answers; (status, code), or (0, "closed") when it only
    closes the connection."""
    sock = connect(port)
    try:
        sock.sendall(
            b"POST /remove-background HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        sock.settimeout(every)
        deadline = time.monotonic() + GENEROUS_S * 2
        while time.monotonic() < deadline:
            try:
                first = sock.recv(65536, socket.MSG_PEEK)
            except TimeoutError:
                sock.sendall(b"x")
                continue
            except ConnectionResetError:
                return 0, "closed"
            if not first:
                return 0, "closed"
            sock.settimeout(GENEROUS_S)
            status, _, body = read_response(sock)
            return status, json.loads(body)["code"]
        raise AssertionError("the slow upload was never answered")
    except (BrokenPipeError, ConnectionResetError):
        return 0, "closed"
    finally:
        sock.close()


def test_slow_uploads_get_408_and_never_hold_a_place(node: Node) -> None:
    photo = encode_image(subject_image())
    with ThreadPoolExecutor(5) as pool, HealthProbe(node.url) as probe:
        slow = [pool.submit(slow_upload, node.port) for _ in range(5)]
        time.sleep(0.5)  # all five are trickling
        with httpx.Client(base_url=node.url, timeout=GENEROUS_S) as client:
            served = client.post("/remove-background", files={"file": ("a.png", photo)})
            job = client.post("/jobs", files={"file": ("a.png", photo)})
            assert job.status_code == 202, job.text
            status = ""
            deadline = time.monotonic() + GENEROUS_S
            while status not in ("succeeded", "failed") and time.monotonic() < deadline:
                status = client.get(job.json()["status_url"]).json()["status"]
                time.sleep(0.05)
        attacked = [all(not f.done() for f in slow)]
        outcomes = [f.result() for f in slow]
    assert served.status_code == 200, served.text
    # The job runner was not starved of places either.
    assert status == "succeeded"
    # Both happened while the five uploads were still trickling.
    assert attacked == [True]
    assert all(o in ((408, "upload_timeout"), (0, "closed")) for o in outcomes), outcomes
    assert outcomes.count((408, "upload_timeout")) >= 1, outcomes
    assert set(probe.statuses) == {200} and len(probe.latencies) >= 20
    assert probe.p99() < HEALTH_P99_S, probe.slowest()


def test_a_zip_of_200000_directories_gets_413_while_health_stays_fast(node: Node) -> None:
    data = directory_zip(200_000)
    assert 16 * 2**20 < len(data) < 20 * 2**20
    with HealthProbe(node.url, every=0.01) as probe, httpx.Client(timeout=30) as client:
        time.sleep(0.1)
        response = client.post(
            f"{node.url}/batches", files={"file": ("dirs.zip", data, "application/zip")}
        )
        time.sleep(0.1)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "batch_too_large"
    assert "200000" in response.json()["message"]
    assert set(probe.statuses) == {200} and len(probe.latencies) >= 10
    assert probe.p99() < HEALTH_P99_S, probe.slowest()


def test_a_gunicorn_node_applies_the_same_connection_guards(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    env = guard_env(tiny_model_path, tmp_path)
    env["BGSVC_MAX_CONNECTIONS"] = "2"
    with running_node(tmp_path / "run", env) as started:
        wait_ready(started.url, lambda: True)
        with connect(started.port) as silent:
            assert closed_by_server(silent)
        with connect(started.port) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000)
            status, _, body = read_response(sock)
            assert (status, json.loads(body)["code"]) == (431, "headers_too_large")
        with connect(started.port) as one, connect(started.port) as two:
            assert get(one)[0] == 200 and get(two)[0] == 200
            with connect(started.port) as three:
                # The limit, served by closing the connection idle the longest.
                assert get(three, "/models")[0] == 200
                assert closed_by_server(one)
