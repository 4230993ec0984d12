"""uvicorn's httptools protocol, sending each response's head and first body chunk in one
write.

Why: uvicorn writes the status line and headers as soon as the app starts its response,
and the body in a second write. A node killed (``kill -9``, OOM) between the two leaves
the balancer holding a response head with no body. nginx has then already passed the
head on to the client, so it can no longer try another node, and the client gets a
truncated response: seen once in 48,810 requests at ~1,000 requests/s with a node killed
(tests/cluster/test_high_rate.py). With the head and the body in one write, the response
is in the kernel whole or not at all; the kernel still delivers what it holds after the
process dies, and a response never started is retried on another node by nginx.

It also guards what a client gets before the app sees a request, which httptools does not:
a request's head must arrive within ``header_timeout_s`` (from the connection's start, or
from the head's first byte on a kept-alive connection) and within the config's
``h11_max_incomplete_event_size`` bytes (uvicorn applies that one to h11 only); and beyond
the config's ``limit_concurrency`` connections (or running requests) a request gets a JSON
503 that closes its connection (probes excepted), unless closing idle connections, the
longest idle first, makes room for it (as nginx reuses idle keep-alive connections when it
runs out): an idle connection costs its client nothing to hold, and held by the thousand
they locked out every client that asked. A request answered before its body is all
in must finish sending it within ``header_timeout_s`` of the answer, or its connection is
closed.
Without them a node kept a silent connection, half-sent headers, a 1 MiB header or a body
dripped after its answer open for as long as the client liked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from bgsvc.error_handlers import error_body, error_headers, error_response
from bgsvc.errors import BgsvcError, HeadersTooLarge, HeaderTimedOut, TooManyConnections

log = logging.getLogger(__name__)
# Refusals of an attack come by the thousand: one warning per kind per this many seconds.
WARN_EVERY_S = 30.0
_warned: dict[str, float] = {}

# Answered past the connection limit too: liveness and readiness probes.
PROBES = frozenset({b"/health", b"/ready"})
# Each server's idle connections, the longest idle first (insertion order: uvloop's clock
# moves once per loop turn, and a burst of connections would tie on it). Per server state,
# so that a request at the limit finds a connection to close without looking at the rest.
_IDLE: weakref.WeakKeyDictionary[ServerState, dict[CoalescingHttpToolsProtocol, None]] = (
    weakref.WeakKeyDictionary()
)

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


class _Held:
    """The transport as one ``send`` sees it: writes are collected, flushed as one."""

    def __init__(self, transport: Any, pending: list[bytes]) -> None:
        self._transport = transport
        self._pending = pending

    def write(self, data: bytes) -> None:
        self._pending.append(data)

    def close(self) -> None:
        flush(self._transport, self._pending)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def flush(transport: Any, pending: list[bytes]) -> None:
    """Write what was held, in one write."""
    if pending:
        data = b"".join(pending)
        pending.clear()
        transport.write(data)


def coalesce(cycle: Any) -> None:
    """Make ``cycle`` (a RequestResponseCycle) hold its response head until the next
    message and write both together. Messages after that go straight through."""
    send: Send = cycle.send
    transport = cycle.transport
    pending: list[bytes] = []

    async def coalescing_send(message: Message) -> None:
        if message["type"] != "http.response.start" and not pending:
            await send(message)
            return
        cycle.transport = _Held(transport, pending)
        try:
            await send(message)
        finally:
            cycle.transport = transport
        if message["type"] != "http.response.start":
            # The head and the first body chunk (or the head alone, for HEAD and 204,
            # whose body message writes nothing).
            flush(transport, pending)

    cycle.send = coalescing_send


def _warn(kind: str, message: str) -> None:
    now = time.monotonic()
    if now - _warned.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
        _warned[kind] = now
        log.warning("%s (further ones silent for %.0f s)", message, WARN_EVERY_S)


def refusal(exc: BgsvcError) -> bytes:
    """A whole response for ``exc`` that closes the connection, for answers given before
    any request reached the app (its JSON as error_response renders it)."""
    body = json.dumps(error_body(exc.code, exc.message, "-", "")).encode()
    headers = {
        **error_headers(exc, "-"),
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
    }
    head = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
    return STATUS_LINE[exc.status] + head + b"\r\n" + body


def answering(exc: BgsvcError) -> Callable[[Any, Any, Any], Awaitable[None]]:
    """An ASGI app that answers ``exc`` (it closes the connection: see its headers), run in
    place of the app for a request refused once its head is in."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await error_response(exc, "-", scope["path"])(scope, receive, send)

    return app


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose responses start with one write of head and body, and
    whose request heads are held to a size and a time (see the module's docstring)."""

    # Set by guarded(); None here leaves heads untimed (the class as tests build it).
    header_timeout_s: float | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head_bytes = config.h11_max_incomplete_event_size
        # Checked here, not by uvicorn: uvicorn counts the asking connection itself (its
        # limit N serves N - 1) and answers in plain text.
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None
        # Bytes of the head being received; None from its end until the next one begins.
        self.head_bytes: int | None = 0
        self.head_begun = False
        self.head_timer: asyncio.TimerHandle | None = None
        # A request answered before its body was all in (401, 404, /health with a body):
        # the rest of that body must arrive by a deadline, or the connection closes.
        self.unread: Any = None
        self.unread_timer: asyncio.TimerHandle | None = None
        # The server's connections waiting for their client's next request (or its first).
        self.idle = _IDLE.setdefault(server_state, {})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_now()
        self._time_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.pop(self, None)
        self._untime_head()
        self._untime_unread()
        super().connection_lost(exc)

    def _idle_now(self) -> None:
        """The connection waits for its client, from now: the last in line to be closed."""
        self.idle.pop(self, None)
        self.idle[self] = None

    def on_response_complete(self) -> None:
        # uvicorn reads on into the body nobody asked for, and re-arms nothing but its
        # keep-alive timer, which each byte received cancels: a client dripping such a body
        # held the connection (and a place under the connection limit) for ever.
        # self.cycle is the newest request's: with one pipelined behind, not this response's.
        cycle = self.cycle
        unread = cycle is not None and cycle.response_complete and cycle.more_body
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None and not unread and not self.head_begun:
            self._idle_now()  # uvicorn armed its keep-alive timer: nothing under way
        if unread and not self.transport.is_closing():
            self.unread = self.cycle
            delay = self.header_timeout_s if self.header_timeout_s is not None else 0.0
            self.unread_timer = self.loop.call_later(delay, self._close_unread)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.unread is not None and self.cycle is self.unread:
            # All of it is in: the connection is an idle kept-alive one again (the client was
            # not told otherwise, and may send its next request on it at once), so it gets
            # back the keep-alive timer its bytes cancelled.
            self.unread = None
            self._untime_unread()
            if self.timeout_keep_alive_task is None and not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
                self._idle_now()

    def _close_unread(self) -> None:
        self._untime_unread()
        self.unread = None
        if not self.transport.is_closing():
            self.transport.close()

    def _untime_unread(self) -> None:
        if self.unread_timer is not None:
            self.unread_timer.cancel()
            self.unread_timer = None

    def data_received(self, data: bytes) -> None:
        # Counted whole, before parsing, to bound what httptools buffers of a head that has
        # not ended (one that ends is measured exactly in on_headers_complete). The read
        # that starts a head after a body goes uncounted: at most one read (256 KiB) over.
        if self.head_bytes is not None:
            self.head_bytes += len(data)
        super().data_received(data)
        limit = self.max_head_bytes
        if self.head_bytes is not None and limit is not None and self.head_bytes > limit:
            _warn("head", f"request heads over {limit} bytes refused (431)")
            self._refuse(HeadersTooLarge(f"The request's head exceeds {limit} bytes."))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.idle.pop(self, None)
        self.head_begun = True
        if self.head_bytes is None:
            self.head_bytes = 0
        self._time_head()

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        self.head_begun = False
        self._untime_head()
        app = self.app
        refused = self._refused_head() or self._refused_connection()
        if refused is not None:
            self.app = answering(refused)
        before = self.cycle
        try:
            super().on_headers_complete()
        finally:
            self.app = app
        if self.cycle is not before:  # not an upgrade (those keep the old cycle)
            coalesce(self.cycle)

    def _refused_head(self) -> BgsvcError | None:
        # Exact, now that it is parsed: data_received cannot judge the read a head ends in
        # (it may bring the body too), and one read is up to 256 KiB.
        limit = self.max_head_bytes
        if limit is None:
            return None
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size + len(b"GET  HTTP/1.1\r\n\r\n") <= limit:
            return None
        _warn("head", f"request heads over {limit} bytes refused (431)")
        return HeadersTooLarge(f"The request's head exceeds {limit} bytes.")

    def _refused_connection(self) -> BgsvcError | None:
        limit = self.max_connections
        if limit is None or (len(self.connections) <= limit and len(self.tasks) < limit):
            return None
        if self.url.split(b"?", 1)[0] in PROBES:
            # A flood of connections must not get a live process restarted by its probes
            # (answered past the limit, they close no one else's connection for it).
            return None
        if len(self.tasks) < limit and self._room_made(len(self.connections) - limit):
            return None
        _warn("connections", f"requests over {limit} connections refused (503)")
        return TooManyConnections("This node has too many connections open; retry.")

    def _room_made(self, excess: int) -> bool:
        """Whether ``excess`` idle connections, the longest idle first, could be closed to
        bring this one within the limit; if so, closed. Idle: nothing under way, and the
        last response all written (a client that stops reading holds its socket, and
        keeps its place, until it reads). Connections still closing count as open."""
        victims = []
        for other in self.idle:
            transport = other.transport
            if other is self or transport.is_closing() or transport.get_write_buffer_size():
                continue
            victims.append(other)
            if len(victims) == excess:
                break
        if len(victims) < excess:
            return False
        for victim in victims:
            self.idle.pop(victim, None)
            victim.transport.close()
        _warn("idle", "idle connections closed to make room at the connection limit")
        return True

    def _time_head(self) -> None:
        if self.header_timeout_s is not None and self.head_timer is None:
            self.head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _untime_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if not self.head_begun:
            self.transport.close()  # nothing asked, nothing to answer
            return
        _warn("head-timeout", f"request heads slower than {self.header_timeout_s:g} s closed")
        self._refuse(HeaderTimedOut(f"The request's head took over {self.header_timeout_s:g} s."))

    def _refuse(self, exc: BgsvcError) -> None:
        """Answer ``exc`` and close, or, while a response is under way (a pipelined head
        after it), close once it is sent, reading nothing more meanwhile."""
        self.head_bytes = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(refusal(exc))
        self.transport.close()


def guarded(header_timeout_s: float) -> type[CoalescingHttpToolsProtocol]:
    """The protocol class with request heads timed to ``header_timeout_s``."""
    return type(
        "GuardedHttpToolsProtocol",
        (CoalescingHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "__module__": __name__},
    )


# uvicorn's `http` setting takes a protocol class as "module:attribute".
PROTOCOL = f"{__name__}:CoalescingHttpToolsProtocol"
