"""Pure ASGI middleware: request context and metrics, then admission for the heavy routes."""

from __future__ import annotations

import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bgsvc import tracing
from bgsvc.errors import BgsvcError, NotReady, UploadTooLarge, error_response
from bgsvc.log import log_request, request_id_var
from bgsvc.metrics import Metrics
from bgsvc.state import AppState

# Echo a caller's id only if it is safe in headers and logs.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

HEAVY_ROUTES = frozenset({"/remove-background", "/api/remove", "/v1.0/removebg"})
# rembg's GET /api/remove?url= runs a removal too, so it is admitted like the uploads.
ADMITTED = frozenset({("POST", path) for path in HEAVY_ROUTES} | {("GET", "/api/remove")})


def request_id_of(scope: Scope) -> str:
    """The request id the context middleware put in the scope."""
    state = scope.get("state") or {}
    return str(state.get("request_id", "-"))


class RequestContextMiddleware:
    """Request id (echoed or made), X-Served-By, traceresponse, the HTTP request metrics
    and the per-request log record."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, node_name: str, access_log: bool = False
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.node_name = node_name
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers["X-Served-By"] = self.node_name
                trace = tracing.traceresponse()
                if trace is not None:
                    headers["traceresponse"] = trace
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None)
            if label is None:
                # Admission answers before routing; keep those answers on their route.
                label = scope["path"] if scope["path"] in HEAVY_ROUTES else "unmatched"
            method = scope["method"]
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method, str(status)).observe(elapsed)
            if self.access_log:
                log_request(method, scope["path"], label, status, elapsed)
            request_id_var.reset(token)


class AdmissionMiddleware:
    """For the heavy routes: refuse at once when not ready or full (before reading the
    upload or fetching a URL), then read the body within the byte limit and hand the ticket
    to the route. A URL is fetched under the ticket, as an upload is read under it: the
    ticket bounds how many inputs a process holds in memory at once."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in ADMITTED:
            await self.app(scope, receive, send)
            return
        limit = self.state.settings.max_upload_bytes
        try:
            ready, reason = self.state.serviceable()
            if not ready:
                raise NotReady(f"Not ready: {reason}.", retry_after=5)
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise UploadTooLarge(f"The upload exceeds {limit} bytes.")
            ticket = self.state.scheduler.try_admit()
        except BgsvcError as exc:
            await self._reject(exc, scope, receive, send)
            return
        try:
            try:
                body = await self._read_body(receive, limit)
            except UploadTooLarge as exc:
                await self._reject(exc, scope, receive, send)
                return
            scope["state"]["ticket"] = ticket
            await self.app(scope, _replay(body, receive), send)
        finally:
            ticket.close()

    async def _reject(self, exc: BgsvcError, scope: Scope, receive: Receive, send: Send) -> None:
        if exc.reason is not None:
            self.state.metrics.rejections.labels(exc.reason).inc()
        response = error_response(exc, request_id_of(scope), scope["path"])
        if self.state.stuck:
            # This process is going away: a kept-alive client (nginx's upstream pool)
            # reconnects, most likely to another worker, instead of racing the close of
            # its idle connection when the drain ends.
            response.headers["Connection"] = "close"
        await response(scope, receive, send)

    @staticmethod
    async def _read_body(receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(f"The upload exceeds {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
