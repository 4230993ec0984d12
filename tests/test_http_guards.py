"""The node's HTTP protocol guards request heads (size, time) and connections, in-process
on a recording transport: what httptools and uvicorn leave open to a hostile client."""

from __future__ import annotations

import asyncio
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from uvicorn.server import ServerState

from bgsvc.config import Settings
from bgsvc.http_protocol import CoalescingHttpToolsProtocol
from bgsvc.server import guard_connections
from tests.transport import RecordingTransport

LIMIT = 4096
# A request its answer leaves unread: the body goes on after the response.
UNREAD = b"GET /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _slow(request: Request) -> PlainTextResponse:
    body = await request.body()
    await asyncio.sleep(0.2)
    return PlainTextResponse(f"slow:{len(body)}")


APP = Starlette(
    routes=[
        Route("/ok", _ok),
        Route("/health", _ok),
        Route("/slow", _slow, methods=["GET", "POST"]),
    ]
)


def _config(max_connections: int = 0, header_timeout_s: float = 0.2) -> uvicorn.Config:
    config = uvicorn.Config(APP, log_config=None, access_log=False, lifespan="off")
    settings = Settings(
        max_header_bytes=LIMIT, header_timeout_s=header_timeout_s, max_connections=max_connections
    )
    guard_connections(config, settings)
    config.load()
    return config


class Connection:
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        self.protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=state, app_state={}
        )
        self.transport = RecordingTransport()
        self.closed = False
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def status(self) -> int:
        return int(self.transport.data.split(b" ", 2)[1])

    def code(self) -> str:
        return str(json.loads(self.transport.data.partition(b"\r\n\r\n")[2])["code"])

    def close(self) -> None:
        """The client goes; whether the server had closed first is kept in ``closed``."""
        self.closed = self.transport.closed
        self.protocol.connection_lost(None)


async def _settle(seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(50):
        await asyncio.sleep(0)


def _exchange(
    *chunks: bytes, wait: float = 0.0, config: uvicorn.Config | None = None
) -> Connection:
    async def run() -> Connection:
        connection = Connection(config or _config(), ServerState())
        for chunk in chunks:
            connection.send(chunk)
        await _settle(wait)
        connection.close()
        return connection

    return asyncio.run(run())


def test_the_settings_reach_the_uvicorn_config() -> None:
    config = _config(max_connections=7, header_timeout_s=3)
    protocol = config.http_protocol_class
    assert issubclass(protocol, CoalescingHttpToolsProtocol)
    assert protocol.header_timeout_s == 3
    assert (config.h11_max_incomplete_event_size, config.limit_concurrency) == (LIMIT, 7)
    assert _config(max_connections=0).limit_concurrency is None


def test_a_head_over_the_limit_in_one_read_gets_431_and_the_connection_closes() -> None:
    head = b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * LIMIT + b"\r\n\r\n"
    connection = _exchange(head)
    assert (connection.status(), connection.code()) == (431, "headers_too_large")
    assert connection.closed


def test_a_head_growing_past_the_limit_is_refused_before_it_ends() -> None:
    chunks = [b"GET /ok HTTP/1.1\r\nHost: t\r\n"] + [b"X-Pad: " + b"a" * 1000 + b"\r\n"] * 5
    connection = _exchange(*chunks)
    assert (connection.status(), connection.code()) == (431, "headers_too_large")
    assert connection.closed


def test_a_head_within_the_limit_is_served_and_kept_alive() -> None:
    head = b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * (LIMIT // 2) + b"\r\n\r\n"
    connection = _exchange(head)
    assert connection.status() == 200 and not connection.closed


def test_a_silent_connection_is_closed_without_an_answer_after_the_header_timeout() -> None:
    connection = _exchange(wait=0.3)
    assert connection.closed and connection.transport.data == b""


def test_a_half_sent_head_gets_408_after_the_header_timeout() -> None:
    connection = _exchange(b"GET /ok HTTP/1.1\r\nHost:", wait=0.3)
    assert (connection.status(), connection.code()) == (408, "header_timeout")
    assert connection.closed


def test_a_kept_alive_connection_waits_without_a_head_timer_between_requests() -> None:
    request = b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"
    connection = _exchange(request, wait=0.3)
    assert connection.status() == 200 and not connection.closed


def test_at_the_limit_the_connection_idle_the_longest_is_closed_to_serve_a_request() -> None:
    async def run() -> tuple[Connection, Connection, Connection]:
        config, state = _config(max_connections=2), ServerState()
        older = Connection(config, state)
        older.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        newer = Connection(config, state)
        newer.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        older.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")  # idle again, after newer
        await _settle()
        third = Connection(config, state)
        third.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        for connection in (older, newer, third):
            connection.close()
        return older, newer, third

    older, newer, third = asyncio.run(run())
    assert third.status() == 200 and not third.closed
    assert newer.closed and not older.closed


def test_a_connection_with_a_pipelined_request_under_way_is_never_closed_as_idle() -> None:
    async def run() -> tuple[Connection, Connection, Connection]:
        config, state = _config(max_connections=2, header_timeout_s=5), ServerState()
        busy = Connection(config, state)
        # The first request runs; the second is pipelined behind it, its body half in when
        # the first is answered, the rest after: the second runs while nothing is idle here.
        busy.send(
            b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nxx"
        )
        await _settle(0.3)
        busy.send(b"yy")
        await _settle()
        fresh = Connection(config, state)  # idle: it has asked nothing yet
        third = Connection(config, state)
        third.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle(0.4)
        for connection in (busy, fresh, third):
            connection.close()
        return busy, fresh, third

    busy, fresh, third = asyncio.run(run())
    assert busy.transport.data.count(b"HTTP/1.1 200") == 2 and b"slow:4" in busy.transport.data
    assert not busy.closed and fresh.closed
    assert third.status() == 200


def test_a_client_that_stops_reading_keeps_its_connection_at_the_limit() -> None:
    # Its last response still sits in the node's buffer: closing it would not free the
    # socket until the client reads, so it is not a connection to make room with.
    async def run() -> tuple[Connection, Connection]:
        config, state = _config(max_connections=1), ServerState()
        slow_reader = Connection(config, state)
        slow_reader.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        slow_reader.transport.buffered = 1 << 20
        other = Connection(config, state)
        other.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        for connection in (slow_reader, other):
            connection.close()
        return slow_reader, other

    slow_reader, other = asyncio.run(run())
    assert not slow_reader.closed
    assert (other.status(), other.code()) == (503, "too_many_connections")


def test_a_probe_at_the_limit_is_answered_without_closing_anyone_else() -> None:
    async def run() -> tuple[Connection, Connection]:
        config, state = _config(max_connections=1), ServerState()
        idle = Connection(config, state)
        idle.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        probe = Connection(config, state)
        probe.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        for connection in (idle, probe):
            connection.close()
        return idle, probe

    idle, probe = asyncio.run(run())
    assert probe.status() == 200 and not idle.closed


def test_a_request_beyond_the_limit_gets_503_and_closes_when_no_connection_is_idle() -> None:
    async def run() -> tuple[Connection, Connection]:
        config, state = _config(max_connections=2, header_timeout_s=5), ServerState()
        first, second = Connection(config, state), Connection(config, state)
        first.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n")  # a head under way
        second.send(UNREAD)  # answered, its body still coming
        await _settle()
        third = Connection(config, state)
        third.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        for connection in (first, second, third):
            connection.close()
        return second, third

    served, refused = asyncio.run(run())
    assert served.status() == 200 and not served.closed
    assert (refused.status(), refused.code()) == (503, "too_many_connections")
    assert b"retry-after: 1" in refused.transport.data.lower()
    assert refused.closed


def test_a_body_the_answer_left_unread_cannot_hold_the_connection_by_dripping() -> None:
    # Each byte re-armed nothing but uvicorn's keep-alive timer, which the next byte
    # cancelled: one byte a second kept the connection for ever.
    async def run() -> tuple[Connection, bool]:
        connection = Connection(_config(header_timeout_s=0.3), ServerState())
        connection.send(UNREAD)
        for _ in range(3):
            await _settle(0.05)
            connection.send(b"x")
        open_while_dripping = not connection.transport.closed
        await _settle(0.3)
        connection.close()
        return connection, open_while_dripping

    connection, open_while_dripping = asyncio.run(run())
    assert connection.status() == 200
    assert open_while_dripping and connection.closed


def test_a_body_answered_early_that_ends_in_time_leaves_the_connection_kept_alive() -> None:
    # The client was never told to close (a 429 or 401 to a client that keeps its
    # connection): closing after the body would race its next request.
    async def run() -> tuple[Connection, bool, bool]:
        connection = Connection(_config(header_timeout_s=0.3), ServerState())
        connection.send(UNREAD)
        await _settle()
        connection.send(b"x" * 990)
        await _settle(0.4)  # past the deadline the unread body had
        open_after = not connection.transport.closed
        timed = connection.protocol.timeout_keep_alive_task is not None
        connection.close()
        return connection, open_after, timed

    connection, open_after, timed = asyncio.run(run())
    assert connection.status() == 200 and open_after
    assert timed  # and idles out as any kept-alive connection does


def test_probes_are_answered_beyond_the_connection_limit() -> None:
    async def run() -> Connection:
        config, state = _config(max_connections=1), ServerState()
        held = Connection(config, state)
        held.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        probe = Connection(config, state)
        probe.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        await _settle()
        held.close()
        probe.close()
        return probe

    assert asyncio.run(run()).status() == 200
