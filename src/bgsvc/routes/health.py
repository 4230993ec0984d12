"""Probes, metrics and the model list: cheap routes that never touch the model."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from bgsvc.errors import AuthRequired
from bgsvc.inference.registry import known_models
from bgsvc.routes.common import app_state

router = APIRouter(tags=["Operations"])


@router.get("/health", summary="Liveness: 200 while the process runs")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: 200 once the model is loaded and warm and the process is not draining",
    responses={503: {"description": "Loading, failed, or draining"}},
)
async def ready(request: Request) -> JSONResponse:
    state = app_state(request)
    ok, reason = state.readiness()
    body: dict[str, Any] = {"status": reason}
    if ok:
        # Which engine and precision each model runs on, and why (chosen at start).
        body["engines"] = state.engine_choices()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics; with BGSVC_METRICS_TOKEN set, for its bearer only",
    response_class=Response,
    responses={401: {"description": "BGSVC_METRICS_TOKEN is set and was not sent"}},
)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    settings = state.settings
    token = settings.metrics_token.get_secret_value()
    if token:
        if not _bearer_is(request.headers.get("authorization", ""), token):
            raise AuthRequired("/metrics needs Authorization: Bearer <BGSVC_METRICS_TOKEN>.")
        tenants = True
    else:
        # Whoever can reach the port may scrape: with keys required, the series named
        # after keys would tell them who the tenants are and how much each one sends.
        tenants = settings.auth == "off"
    body, content_type = state.metrics.render(tenants=tenants)
    return Response(body, media_type=content_type)


def _bearer_is(header: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    # Compared in constant time: the time a wrong guess takes says nothing of the token.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


@router.get("/models", summary="Models this server allows, and its default")
async def models(request: Request) -> dict[str, Any]:
    state = app_state(request)
    settings = state.settings
    specs = known_models(settings)
    engines = state.engine_choices()
    return {
        "default": settings.default_model,
        "models": [
            {
                "name": name,
                "description": specs[name].description,
                "license": specs[name].license,
                # Absent until the model is loaded.
                **({"runtime": engines[name]} if name in engines else {}),
            }
            for name in settings.models
            if name in specs
        ],
    }
