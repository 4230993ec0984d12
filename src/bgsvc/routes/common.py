"""Helpers the routers share: reading the upload, reaching the state, shaping the response."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from bgsvc.errors import InvalidParameter, MissingImage, UploadTooLarge, VideoNeedsJob
from bgsvc.imaging.video import is_video
from bgsvc.inference.scheduler import Ticket
from bgsvc.middleware import key_name, limited_receive
from bgsvc.options import RemovalOptions
from bgsvc.pipeline import RemovalResult
from bgsvc.state import AppState

if TYPE_CHECKING:
    from bgsvc.auth.middleware import AuthContext
    from bgsvc.urlinputs.fetcher import UrlFetcher

# OpenAPI for routes that take either a multipart upload or a raw image body.
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The image."},
                        "image_file": {
                            "type": "string",
                            "format": "binary",
                            "description": "Alias of `file`.",
                        },
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

M = TypeVar("M", bound=BaseModel)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}, "application/zip": {}}},
    400: {"description": "Bad parameter or undecodable image"},
    413: {"description": "Upload or image too large"},
    415: {"description": "Unsupported image format"},
    429: {"description": "At capacity; see Retry-After"},
    503: {"description": "Model not loaded yet or draining"},
    504: {"description": "Request took longer than the timeout"},
}


def app_state(request: Request) -> AppState:
    """The process state created by the app factory."""
    state: AppState = request.app.state.bgsvc
    return state


async def fetch_url_image(request: Request, url: str, what: str) -> bytes:
    """The image at ``url`` (``what`` names the parameter); InvalidParameter while
    BGSVC_URL_INPUTS is off. The fetch holds one of the fetcher's places, never an
    admission place: a removal's ticket is set aside while its input is fetched (a slow
    origin delays only its own request), and taken again once the image is in hand."""
    fetcher: UrlFetcher | None = request.app.state.url_fetcher
    if fetcher is None:
        raise InvalidParameter(
            f"{what}: fetching images by URL is turned off on this server "
            "(BGSVC_URL_INPUTS=false); send the image itself."
        )
    ticket: Ticket | None = getattr(request.state, "ticket", None)
    with ticket.aside() if ticket is not None else nullcontext():
        return await fetcher.fetch(url, key_name(request.scope))


def ticket_of(request: Request) -> Ticket:
    """The admission ticket the middleware issued for this request."""
    ticket: Ticket = request.state.ticket
    return ticket


async def read_upload(
    request: Request, fields: tuple[str, ...]
) -> tuple[bytes | None, dict[str, str]]:
    """The image bytes (multipart field in ``fields`` or a raw ``image/*`` body) and any
    other form fields as strings."""
    data, others, _ = await read_upload_with(request, fields, ())
    return data, others


async def read_upload_with(
    request: Request, fields: tuple[str, ...], extra_files: tuple[str, ...]
) -> tuple[bytes | None, dict[str, str], dict[str, bytes]]:
    """``read_upload``, plus the bytes of the file parts named in ``extra_files`` (remove.bg's
    background image)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=4, max_fields=64)
        data: bytes | None = None
        others: dict[str, str] = {}
        extra: dict[str, bytes] = {}
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key in fields and data is None:
                        data = await value.read()
                    elif key in extra_files:
                        if key in extra:
                            raise InvalidParameter(f"{key} was sent more than once.")
                        extra[key] = await value.read()
                    elif key not in fields:
                        # Named, unread: a route that refuses the field must see it was sent,
                        # not answer as if it never came.
                        others[key] = "(file)"
                elif key in fields and data is None:
                    # A text field where the file should be: curl -F file=... without '@'.
                    raise MissingImage(f"Field {key!r} must be a file upload.")
                else:
                    others[key] = value
        finally:
            # Also when a part is refused: its spooled file is closed, not left to the GC.
            await form.close()
        return data, others, extra
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return await request.body(), {}, {}
    return None, {}, {}


def parse_params(model: type[M], values: dict[str, str]) -> M:
    """Validate merged query and form values, mapping failures to InvalidParameter."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise InvalidParameter(f"{where}: {first['msg']}") from None


class RemovalParams(BaseModel):
    """Options of one API dialect; each maps them to the dialect-neutral options."""

    def to_options(self) -> RemovalOptions:
        """The dialect-neutral options."""
        raise NotImplementedError


P = TypeVar("P", bound=RemovalParams)


async def remove_upload(
    request: Request,
    params: P,
    fields: tuple[str, ...],
    missing: str,
    url_field: str | None = None,
) -> RemovalResult:
    """Read the upload (``fields`` name the file part) or, when ``url_field`` is named and
    given (query or form), fetch the image from that URL; let form fields override the
    query parameters, and run the removal under the request's admission ticket."""
    data, form = await read_upload(request, fields)
    url = None
    if url_field is not None:
        url = form.pop(url_field, None) or request.query_params.get(url_field)
    if data is not None and url:
        raise InvalidParameter(f"Send the image or {url_field}, not both.")
    if data is None and not url:
        raise MissingImage(missing)
    if form:
        params = parse_params(type(params), {**request.query_params, **form})
    # Options are checked before anything is fetched: a bad one costs no outbound request.
    options = params.to_options()
    if data is None:
        data = await fetch_url_image(request, str(url), str(url_field))
    return await remove_for(request, data, options)


def auth_of(request: Request) -> AuthContext | None:
    """The request's key and charge; None when keys are off."""
    context: AuthContext | None = request.scope.get("state", {}).get("auth")
    return context


def tenant_of(request: Request) -> str | None:
    """The name of the key making the request: the owner of what it submits, the only one
    who may see it, and whose result cache serves it. None when keys are off (everything is
    everyone's, as for a single user)."""
    context = auth_of(request)
    return None if context is None else context.key.name


async def remove_for(request: Request, data: bytes, options: RemovalOptions) -> RemovalResult:
    """Run the removal under the request's admission ticket, in its tenant's cache."""
    if is_video(data):
        raise VideoNeedsJob(
            "A video takes longer than a request may; send it to POST /jobs and fetch the "
            "result when the job has succeeded."
        )
    service = app_state(request).service
    context = auth_of(request)
    if context is not None and context.metered:
        # A credit a frame, as a batch costs one an image: charged before any frame runs.
        await context.charge(await service.frame_count(data, options))
    return await service.process(ticket_of(request), data, options, scope=tenant_of(request))


def result_headers(result: RemovalResult) -> dict[str, str]:
    """Size, subject box, model and stage timings of a result."""
    timing = ", ".join(
        f"{name};dur={seconds * 1000:.1f}" for name, seconds in result.timings.items()
    )
    out = result.output
    headers = {
        "X-Width": str(out.width),
        "X-Height": str(out.height),
        "X-Foreground-Top": str(out.box.top),
        "X-Foreground-Left": str(out.box.left),
        "X-Foreground-Width": str(out.box.width),
        "X-Foreground-Height": str(out.box.height),
        "X-Model": out.model,
        "X-Source-Width": str(out.source_size[0]),
        "X-Source-Height": str(out.source_size[1]),
    }
    if timing:
        headers["Server-Timing"] = timing
    if result.cache is not None:
        headers["X-Cache"] = result.cache
    return headers


def image_response(result: RemovalResult) -> Response:
    """The result as image bytes with its headers."""
    out = result.output
    return Response(out.body, media_type=out.media_type, headers=result_headers(result))


def capped_request(request: Request, limit: int, what: str) -> Request:
    """``request`` whose body may not exceed ``limit`` bytes, refused from Content-Length
    before reading when it says so, else while it is read, and must arrive within
    BGSVC_BODY_READ_TIMEOUT_S (408). The queueing routes (jobs, batches) read their bodies
    themselves, with no admission ticket, so the limits the admission middleware applies to
    the sync routes' bodies are applied through this."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(f"The {what} exceeds {limit} bytes.")
    timeout = app_state(request).settings.body_read_timeout_s
    return Request(request.scope, limited_receive(request.receive, limit, timeout, what))
