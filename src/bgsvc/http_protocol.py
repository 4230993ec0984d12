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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose responses start with one write of head and body."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # not an upgrade (those keep the old cycle)
            coalesce(self.cycle)


# uvicorn's `http` setting takes a protocol class as "module:attribute".
PROTOCOL = f"{__name__}:CoalescingHttpToolsProtocol"
