"""Admission and the places before it, in-process: an upload is received under an upload
place and a deadline and holds no admission ticket meanwhile; queueing routes take places
of their own; every refusal is immediate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message

from bgsvc.errors import Overloaded, UploadTimedOut
from bgsvc.inference.scheduler import Places
from bgsvc.middleware import AdmissionMiddleware, limited_receive
from bgsvc.state import AppState


class Exchange:
    """One request through the middleware: a receive that trickles ``chunks`` then waits
    for ever (or ends), and the messages sent back."""

    def __init__(self, method: str, path: str, chunks: list[bytes], ends: bool = False) -> None:
        self.scope: dict[str, Any] = {
            "type": "http",
            "method": method,
            "path": path,
            "headers": [],
            "state": {},
        }
        self.chunks = list(chunks)
        self.ends = ends
        self.sent: list[Message] = []
        self.received = 0

    async def receive(self) -> Message:
        self.received += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {
                "type": "http.request",
                "body": chunk,
                "more_body": bool(self.chunks) or not self.ends,
            }
        if self.ends:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # a client that stopped sending
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}

    @property
    def code(self) -> str:
        return str(json.loads(self.sent[1]["body"])["code"])


def middleware(
    state: AppState, inner: Callable[..., Awaitable[None]] | None = None
) -> AdmissionMiddleware:
    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return AdmissionMiddleware(inner or ok, state)


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.bgsvc  # type: ignore[attr-defined]
    return state


def test_an_upload_being_received_holds_an_upload_place_and_no_ticket(
    make_client: Callable[..., TestClient],
) -> None:
    state = state_of(make_client(body_read_timeout_s=0.3))
    admission = middleware(state)
    slow = Exchange("POST", "/remove-background", [b"first bytes"])

    async def run() -> tuple[int, int]:
        task = asyncio.create_task(admission(slow.scope, slow.receive, slow.send))
        await asyncio.sleep(0.1)
        during = (admission.uploads.held, state.scheduler.admitted)
        await task
        return during

    assert asyncio.run(run()) == (1, 0)
    assert (slow.status, slow.code) == (408, "upload_timeout")
    assert slow.headers["connection"] == "close"
    assert (admission.uploads.held, state.scheduler.admitted) == (0, 0)


def test_uploads_beyond_their_places_are_refused_at_once(
    make_client: Callable[..., TestClient],
) -> None:
    state = state_of(make_client(body_read_timeout_s=5, max_concurrent_uploads=1))
    admission = middleware(state)
    slow = Exchange("POST", "/remove-background", [b"x"])
    second = Exchange("POST", "/remove-background", [b"whole"], ends=True)

    async def run() -> None:
        task = asyncio.create_task(admission(slow.scope, slow.receive, slow.send))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(admission(second.scope, second.receive, second.send), 1)
        task.cancel()

    asyncio.run(run())
    assert (second.status, second.code) == (429, "overloaded")
    assert second.headers["retry-after"] == "1"


def test_a_full_node_refuses_before_receiving_the_upload(
    make_client: Callable[..., TestClient],
) -> None:
    state = state_of(make_client(max_queue=0))
    tickets = [state.scheduler.try_admit() for _ in range(state.scheduler.capacity)]
    refused = Exchange("POST", "/remove-background", [b"whole"], ends=True)
    asyncio.run(middleware(state)(refused.scope, refused.receive, refused.send))
    for ticket in tickets:
        ticket.close()
    assert (refused.status, refused.code, refused.received) == (429, "overloaded", 0)


def test_a_received_upload_takes_its_ticket_for_the_route(
    make_client: Callable[..., TestClient],
) -> None:
    state = state_of(make_client())
    seen: list[tuple[bytes, int, int]] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        seen.append((body, state.scheduler.admitted, admission.uploads.held))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    admission = middleware(state, route)
    whole = Exchange("POST", "/remove-background", [b"one ", b"two"], ends=True)
    asyncio.run(admission(whole.scope, whole.receive, whole.send))
    assert seen == [(b"one two", 1, 0)]
    assert whole.status == 204 and state.scheduler.admitted == 0


def test_a_body_the_client_cut_short_never_reaches_the_route(
    make_client: Callable[..., TestClient],
) -> None:
    # A Content-Length 100 bytes past what was sent, then the client closed: the cut
    # body ran through the model as if it were the whole upload.
    state = state_of(make_client())
    ran: list[bytes] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        ran.append((await receive())["body"])

    class Leaves(Exchange):
        async def receive(self) -> Message:
            if self.chunks:
                return await super().receive()
            return {"type": "http.disconnect"}

    cut = Leaves("POST", "/remove-background", [b"\x89PNG and half a picture"])
    asyncio.run(middleware(state, route)(cut.scope, cut.receive, cut.send))
    assert ran == [] and cut.sent == []
    assert state.scheduler.admitted == 0


def test_a_large_body_reaches_the_route_in_pieces_with_the_loop_turning_between(
    make_client: Callable[..., TestClient],
) -> None:
    # The route's form parser works on the loop: given 24 MB in one piece, it held every
    # other request (health checks included) for seconds.
    state = state_of(make_client())
    body = bytes(range(256)) * 1200  # 300 KiB
    pieces: list[int] = []
    turns = 0

    async def route(scope: Any, receive: Any, send: Any) -> None:
        received = b""
        while True:
            message = await receive()
            pieces.append(turns)
            received += message["body"]
            if not message["more_body"]:
                break
        assert received == body
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def run() -> None:
        ticker = asyncio.create_task(other())
        whole = Exchange("POST", "/remove-background", [body], ends=True)
        await middleware(state, route)(whole.scope, whole.receive, whole.send)
        ticker.cancel()
        assert whole.status == 204

    asyncio.run(run())
    assert len(pieces) == 5  # 64 KiB at a time
    assert pieces == sorted(set(pieces))  # another task ran before each later piece


def test_batch_intakes_beyond_their_places_get_429_with_retry_after(
    make_client: Callable[..., TestClient],
) -> None:
    state = state_of(make_client(batch_max_intakes=1))

    async def run() -> tuple[Exchange, Exchange]:
        gate = asyncio.Event()

        async def route(scope: Any, receive: Any, send: Any) -> None:
            await gate.wait()
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        admission = middleware(state, route)
        first = Exchange("POST", "/batches", [b"zip"], ends=True)
        second = Exchange("POST", "/batches", [b"zip"], ends=True)
        task = asyncio.create_task(admission(first.scope, first.receive, first.send))
        await asyncio.sleep(0.05)
        await admission(second.scope, second.receive, second.send)
        gate.set()
        await task
        third = Exchange("POST", "/batches", [b"zip"], ends=True)
        await admission(third.scope, third.receive, third.send)
        return second, third

    second, third = asyncio.run(run())
    assert (second.status, second.code) == (429, "overloaded")
    assert second.headers["retry-after"] == "5"
    assert third.status == 202  # the place came back


def test_the_deadline_covers_the_body_only() -> None:
    async def run() -> list[str]:
        messages: list[Message] = [
            {"type": "http.request", "body": b"ab", "more_body": False},
            {"type": "http.disconnect"},
        ]

        async def receive() -> Message:
            if len(messages) == 1:
                await asyncio.sleep(0.2)  # the client leaves long after its body came
            return messages.pop(0)

        bounded = limited_receive(receive, limit=10, timeout_s=0.05)
        return [(await bounded())["type"], (await bounded())["type"]]

    assert asyncio.run(run()) == ["http.request", "http.disconnect"]


def test_a_body_past_its_deadline_is_refused_with_408() -> None:
    async def never() -> Message:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    async def run() -> None:
        await limited_receive(never, limit=10, timeout_s=0.05)()

    with pytest.raises(UploadTimedOut):
        asyncio.run(run())


def test_places_refuse_beyond_their_size_and_come_back() -> None:
    places = Places(2, "things")
    with places.hold(), places.hold():
        with pytest.raises(Overloaded, match="Too many things"):
            places.check()
        assert places.held == 2
    assert places.held == 0
    with places.hold():
        assert places.held == 1


def _as_key(exchange: Exchange, name: str) -> Exchange:
    # What the auth middleware, which runs first, leaves for the request.
    exchange.scope["state"]["auth"] = SimpleNamespace(key=SimpleNamespace(name=name))
    return exchange


def test_one_key_holds_at_most_half_the_places_and_the_others_stay_open() -> None:
    places = Places(4, "uploads")
    with places.hold("slow"), places.hold("slow"):
        with pytest.raises(Overloaded, match="for this API key"):
            places.check("slow")
        full = pytest.raises(Overloaded, match="Too many uploads at once; retry")
        with places.hold("other"), places.hold(None), full:
            places.check("third")
    assert places.held == 0
    assert Places(1, "batch uploads").per_owner == 1


def test_a_key_sending_slowly_cannot_take_every_upload_place_from_another_key(
    make_client: Callable[..., TestClient],
) -> None:
    state = state_of(make_client(body_read_timeout_s=5, max_concurrent_uploads=4))
    admission = middleware(state)
    slow = [_as_key(Exchange("POST", "/remove-background", [b"x"]), "b") for _ in range(4)]
    other = _as_key(Exchange("POST", "/remove-background", [b"whole"], ends=True), "c")

    async def run() -> None:
        tasks = [asyncio.create_task(admission(e.scope, e.receive, e.send)) for e in slow]
        await asyncio.sleep(0.05)
        await asyncio.wait_for(admission(other.scope, other.receive, other.send), 1)
        for task in tasks:
            task.cancel()

    asyncio.run(run())
    assert [(e.status, e.code) for e in slow[2:]] == [(429, "overloaded")] * 2
    assert other.status == 200
