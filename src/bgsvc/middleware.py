"""Pure ASGI middleware: request context and metrics, then admission for the heavy routes."""

from __future__ import annotations

import re
import time
import uuid

import anyio
import anyio.lowlevel
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bgsvc import tracing
from bgsvc.error_handlers import reject
from bgsvc.errors import BgsvcError, NotReady, Overloaded, UploadTimedOut, UploadTooLarge
from bgsvc.inference.scheduler import Places
from bgsvc.log import log_request, request_id_var
from bgsvc.metrics import Metrics
from bgsvc.state import AppState

# Echo a caller's id only if it is safe in headers and logs.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

HEAVY_ROUTES = frozenset({"/remove-background", "/api/remove", "/v1.0/removebg"})
# rembg's GET /api/remove?url= runs a removal too, so it is admitted like the uploads.
ADMITTED = frozenset({("POST", path) for path in HEAVY_ROUTES} | {("GET", "/api/remove")})
# Queueing routes: their bodies are received by the route, under a place of their own.
UPLOADING = frozenset({("POST", "/jobs")})
BATCH_INTAKE = frozenset({("POST", "/batches")})
ANSWERED_BEFORE_ROUTING = HEAVY_ROUTES | {path for _, path in UPLOADING | BATCH_INTAKE}
# Methods with a series of their own; the parser accepts some forty more (WebDAV's, RTSP's),
# which anyone could otherwise multiply by routes and statuses into thousands of series.
LABELLED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
                label = scope["path"] if scope["path"] in ANSWERED_BEFORE_ROUTING else "unmatched"
            method = scope["method"]
            shown = method if method in LABELLED_METHODS else "other"
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(label, shown, str(status)).inc()
            self.metrics.latency.labels(label, shown, str(status)).observe(elapsed)
            if self.access_log:
                log_request(method, scope["path"], label, status, elapsed)
            request_id_var.reset(token)


class AdmissionMiddleware:
    """Places before the routes run. A removal (ADMITTED) is refused at once when the node
    is not ready or full; else its body is received under an upload place and a deadline
    (BGSVC_BODY_READ_TIMEOUT_S), and only then does it take an admission ticket, which the
    route finds in the scope. A slow upload thus holds an upload place for at most the
    deadline and never a ticket, so it cannot keep inference, queued requests or the job
    runner waiting. A URL is fetched with the ticket set aside, in the fetcher's own places
    (bgsvc.routes.common.fetch_url_image). POST /jobs runs under an upload place, POST
    /batches under a batch intake place (the routes receive their bodies under the same
    deadline, bgsvc.routes.common.capped_request)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self.uploads = Places(settings.max_concurrent_uploads, "uploads")
        # A job's submission holds its place to the end of the route, its video's header
        # check included (up to BGSVC_VIDEO_STEP_TIMEOUT_S): in places of its own, slow
        # submissions never take the places removal requests are received in.
        self.submissions = Places(max(1, settings.max_concurrent_uploads // 2), "job uploads")
        self.batches = Places(settings.batch_max_intakes, "batch uploads", retry_after=5)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = (scope["method"], scope["path"])
        if route in ADMITTED:
            await self._admit(scope, receive, send)
        elif route in UPLOADING:
            await self._within(self.submissions, scope, receive, send)
        elif route in BATCH_INTAKE:
            await self._within(self.batches, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.state.settings
        limit = settings.max_upload_bytes
        try:
            ready, reason = self.state.serviceable()
            if not ready:
                raise NotReady(f"Not ready: {reason}.", retry_after=5)
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise UploadTooLarge(f"The upload exceeds {limit} bytes.")
            # Full now: refused before the upload is received (it would be refused after).
            self.state.scheduler.check_room()
            with self.uploads.hold(key_name(scope)):
                body = await read_body(receive, limit, settings.body_read_timeout_s)
            if body is None:
                return  # the client left before its body ended: nobody to answer
            ticket = self.state.scheduler.try_admit()
        except BgsvcError as exc:
            await self._reject(exc, scope, receive, send)
            return
        try:
            scope["state"]["ticket"] = ticket
            await self.app(scope, _replay(body, receive), send)
        finally:
            ticket.close()

    async def _within(self, places: Places, scope: Scope, receive: Receive, send: Send) -> None:
        owner = key_name(scope)
        try:
            places.check(owner)
        except Overloaded as exc:
            await self._reject(exc, scope, receive, send)
            return
        with places.hold(owner):
            await self.app(scope, receive, send)

    async def _reject(self, exc: BgsvcError, scope: Scope, receive: Receive, send: Send) -> None:
        # A process going away closes: a kept-alive client (nginx's upstream pool)
        # reconnects, most likely to another worker, instead of racing the close of its
        # idle connection when the drain ends.
        closing = {"Connection": "close"} if self.state.stuck else None
        await reject(exc, scope, self.state.metrics, closing)(scope, receive, send)


def key_name(scope: Scope) -> str | None:
    """The name of the API key the auth middleware found for this request (it runs
    first), or None without keys."""
    auth = scope.get("state", {}).get("auth")
    name: str | None = getattr(getattr(auth, "key", None), "name", None)
    return name


def limited_receive(
    receive: Receive, limit: int, timeout_s: float, what: str = "upload"
) -> Receive:
    """``receive`` for a body of at most ``limit`` bytes (UploadTooLarge past it) that
    arrives within ``timeout_s`` of this call (UploadTimedOut, 408, after it). Once the body
    is complete, later calls (a wait for the disconnect) pass straight through."""
    size = 0
    done = False
    deadline = anyio.current_time() + timeout_s

    async def bounded() -> Message:
        nonlocal size, done
        if done:
            return await receive()
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                message = await receive()
        except TimeoutError:
            raise UploadTimedOut(
                f"The {what} did not arrive within {timeout_s:g} s; send it faster."
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            done = True
        size += len(message.get("body", b""))
        if size > limit:
            raise UploadTooLarge(f"The {what} exceeds {limit} bytes.")
        return message

    return bounded


async def read_body(receive: Receive, limit: int, timeout_s: float) -> bytes | None:
    """The whole body, within ``limit`` bytes and ``timeout_s`` (see limited_receive);
    None when the client went away before it ended (a cut body is not the request)."""
    bounded = limited_receive(receive, limit, timeout_s)
    chunks: list[bytes] = []
    while True:
        message = await bounded()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


# The received body goes on to the app in pieces of this size, each after a turn of the
# event loop: parsed in one piece, a 24 MB multipart body of empty parts held the loop
# for 4.9 s (python-multipart parses on the loop); in pieces, a 64 KiB one at a time.
REPLAY_BYTES = 64 * 1024


def _replay(body: bytes, receive: Receive) -> Receive:
    view = memoryview(body)
    at = 0
    sent = False

    async def replay() -> Message:
        nonlocal at, sent
        if sent:
            return await receive()
        if at:
            await anyio.lowlevel.checkpoint()
        piece = bytes(view[at : at + REPLAY_BYTES]) if len(body) > REPLAY_BYTES else body
        at += len(piece)
        sent = at >= len(body)
        return {"type": "http.request", "body": piece, "more_body": not sent}

    return replay
