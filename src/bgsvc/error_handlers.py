"""Where errors become HTTP answers: the one place for their JSON, their headers, the count
of a refused request and the app's exception handlers.

Two dialects: remove.bg's clients (every path under ``/v1.0/``) read
``{"errors": [{"title", "code"}]}``; everyone else, the rembg-compatible ``/api/remove``
included, reads ``{"code", "message"}``. Both carry the request id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from bgsvc.errors import BgsvcError, InvalidParameter
from bgsvc.metrics import Metrics

log = logging.getLogger(__name__)

REMOVEBG_PREFIX = "/v1.0/"

# Framework answers (no route, wrong method...) under codes of the same kind as ours.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
INTERNAL_ERROR = "internal_error"
INTERNAL_MESSAGE = "Internal server error."


def request_id_of(scope: Scope) -> str:
    """The request id the context middleware (bgsvc.middleware) put in the scope; "-"
    before it ran."""
    state = scope.get("state") or {}
    return str(state.get("request_id", "-"))


def error_body(code: str, message: str, request_id: str, path: str) -> dict[str, object]:
    """The JSON body of an error: remove.bg's shape on its paths, ours elsewhere."""
    if path.startswith(REMOVEBG_PREFIX):
        return {"errors": [{"title": message, "code": code}], "request_id": request_id}
    return {"code": code, "message": message, "request_id": request_id}


def error_headers(exc: BgsvcError, request_id: str) -> dict[str, str]:
    """Headers for a domain error's answer: the request id, Retry-After when it has one,
    then the error's own (Connection: close, WWW-Authenticate, rate limits...)."""
    headers = {"X-Request-ID": request_id}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    headers.update(exc.headers)
    return headers


def error_response(exc: BgsvcError, request_id: str, path: str) -> JSONResponse:
    """The answer for a domain error, in the dialect of ``path``."""
    return JSONResponse(
        error_body(exc.code, exc.message, request_id, path),
        status_code=exc.status,
        headers=error_headers(exc, request_id),
    )


# Where an answer's error says the request keeps the credits it was charged
# (BgsvcError.keeps_credits), for the key middleware that gives a failure's back.
_KEEPS_CREDITS = "keeps_credits"


def keeps_credits(scope: Scope) -> bool:
    """Whether the request's answer was an error that keeps its credits."""
    return bool((scope.get("state") or {}).get(_KEEPS_CREDITS))


def reject(
    exc: BgsvcError,
    scope: Scope,
    metrics: Metrics,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Refuse a request with ``exc``: count it under its reason (bgsvc_rejections_total)
    when it has one and make its answer, ``headers`` added. Used alike by the middleware
    that refuses before the routes and by the app's handler for errors the routes raise."""
    if exc.reason is not None:
        metrics.rejections.labels(exc.reason).inc()
    if exc.keeps_credits:
        scope.setdefault("state", {})[_KEEPS_CREDITS] = True
    response = error_response(exc, request_id_of(scope), scope["path"])
    if headers:
        response.headers.update(headers)
    return response


def _answer(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    request_id = request_id_of(request.scope)
    return JSONResponse(
        error_body(code, message, request_id, request.scope["path"]),
        status_code=status,
        headers={**(headers or {}), "X-Request-ID": request_id},
    )


def install(app: FastAPI, metrics: Metrics) -> None:
    """Answer every error the app raises in the caller's dialect: domain errors with their
    code, invalid parameters as ``invalid_parameter``, the framework's own (404, 405...)
    under codes of their own, and anything unexpected as a logged, generic 500."""

    async def on_domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BgsvcError)
        return reject(exc, request.scope, metrics)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p not in ("query", "body"))
        return reject(InvalidParameter(f"{where}: {first['msg']}"), request.scope, metrics)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return _answer(request, exc.status_code, code, str(exc.detail), exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Handled outside every middleware (Starlette's ServerErrorMiddleware): the log
        # record names its request itself, the context variable is gone by now.
        request_id = request_id_of(request.scope)
        log.exception(
            "unhandled error in %s %s [%s]",
            request.method,
            request.url.path,
            request_id,
            extra={"request_id": request_id},
        )
        return _answer(request, 500, INTERNAL_ERROR, INTERNAL_MESSAGE)

    app.add_exception_handler(BgsvcError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
