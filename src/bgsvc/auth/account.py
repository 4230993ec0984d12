"""remove.bg's GET /v1.0/account: the key's credits, told truthfully from the quota."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bgsvc.limits.base import Limits

router = APIRouter(tags=["remove.bg compatibility"])


@router.get(
    "/v1.0/account",
    summary="remove.bg: credits and free calls",
    description="remove.bg's account shape. `total` and `subscription` are the credits left "
    "this month (UTC) under the key's quota; null when the key (or the service, without "
    "keys) has no quota. Each image costs one credit; there are no free or pay-as-you-go "
    "credits.",
)
async def account(request: Request) -> JSONResponse:
    context = request.scope.get("state", {}).get("auth")
    limits: Limits | None = getattr(request.app.state, "limits", None)
    remaining: int | None = None
    if context is not None and context.key.quota is not None:
        used = await limits.quota_used(context.key.name) if limits is not None else 0
        remaining = max(0, context.key.quota - used)
    return JSONResponse(
        {
            "data": {
                "attributes": {
                    "credits": {
                        "total": remaining,
                        "subscription": remaining,
                        "payg": 0,
                        "enterprise": 0,
                    },
                    "api": {"free_calls": 0, "sizes": "all"},
                }
            }
        }
    )
