"""Responses leave a node in one write of head and body (bgsvc.http_protocol), so a node
killed between the two cannot leave the balancer with a head and no body."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from uvicorn.server import ServerState

from bgsvc.http_protocol import PROTOCOL, CoalescingHttpToolsProtocol
from tests.transport import RecordingTransport


async def _image(request: Request) -> Response:
    body = await request.body()
    return Response(b"x" * 200_000 + body, media_type="image/png")


async def _empty(request: Request) -> Response:
    return Response(status_code=204)


async def _stream(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        for part in (b"one", b"two", b"three"):
            yield part

    return StreamingResponse(chunks(), media_type="text/plain")


APP = Starlette(
    routes=[
        Route("/image", _image, methods=["GET", "POST", "HEAD"]),
        Route("/empty", _empty),
        Route("/stream", _stream),
    ]
)


async def _exchange(request: bytes, settle: int = 50) -> RecordingTransport:
    config = uvicorn.Config(APP, http=PROTOCOL, log_config=None, access_log=False, lifespan="off")
    config.load()
    assert config.http_protocol_class is CoalescingHttpToolsProtocol
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(settle):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


def _run(request: bytes) -> RecordingTransport:
    return asyncio.run(_exchange(request))


def test_a_response_head_and_body_leave_in_one_write() -> None:
    transport = _run(b"GET /image HTTP/1.1\r\nHost: t\r\n\r\n")
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 200000" in head
    assert body == b"x" * 200_000


def test_a_post_with_expect_100_continue_still_gets_its_interim_answer_first() -> None:
    transport = _run(
        b"POST /image HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert transport.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(transport.writes) == 2
    assert transport.writes[1].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[1].endswith(b"abc")


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"HEAD /image", b"HTTP/1.1 200 OK"), (b"GET /empty", b"HTTP/1.1 204 No Content")],
)
def test_a_response_without_a_body_still_sends_its_head(request_line: bytes, status: bytes) -> None:
    transport = _run(request_line + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(status)
    assert transport.writes[0].endswith(b"\r\n\r\n")


def test_a_streamed_response_sends_its_head_with_the_first_chunk_then_the_rest() -> None:
    transport = _run(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b"".join(transport.writes)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert data.endswith(b"5\r\nthree\r\n0\r\n\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\n3\r\none\r\n")


def test_two_requests_on_one_connection_each_get_a_single_write() -> None:
    one = b"GET /image HTTP/1.1\r\nHost: t\r\n\r\n"
    transport = asyncio.run(_exchange(one + one, settle=200))
    assert [w[:15] for w in transport.writes] == [b"HTTP/1.1 200 OK"] * 2
