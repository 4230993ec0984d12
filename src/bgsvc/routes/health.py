"""Probes, metrics and the model list: cheap routes that never touch the model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

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
    ok, reason = app_state(request).readiness()
    return JSONResponse({"status": reason}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = app_state(request).metrics.render()
    return Response(body, media_type=content_type)


@router.get("/models", summary="Models this server allows, and its default")
async def models(request: Request) -> dict[str, Any]:
    settings = app_state(request).settings
    specs = known_models(settings)
    return {
        "default": settings.default_model,
        "models": [
            {"name": name, "description": specs[name].description, "license": specs[name].license}
            for name in settings.models
            if name in specs
        ],
    }
