"""rembg's server API: POST /api/remove with its parameter names, for unchanged clients."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import Field

from bgsvc.errors import InvalidParameter, MissingImage
from bgsvc.options import RemovalOptions, parse_color
from bgsvc.routes.common import (
    ERROR_RESPONSES,
    IMAGE_BODY,
    RemovalParams,
    fetch_url_image,
    image_response,
    remove_for,
    remove_upload,
)

router = APIRouter(tags=["rembg compatibility"])


class RembgParams(RemovalParams):
    """rembg's parameters (query or form), same names and defaults."""

    model: str | None = Field(None, description="Model; only allow-listed names (GET /models).")
    a: bool = Field(False, description="Enable alpha matting.")
    af: int = Field(240, ge=0, le=255, description="Alpha matting foreground threshold.")
    ab: int = Field(10, ge=0, le=255, description="Alpha matting background threshold.")
    ae: int = Field(10, ge=0, le=100, description="Alpha matting erode size.")
    om: bool = Field(False, description="Only mask: return the matte.")
    ppm: bool = Field(False, description="Post-process the mask.")
    bgc: str | None = Field(None, description="Background colour: r,g,b,a or #rrggbb[aa].")
    dc: bool = Field(
        False, description="Decontaminate edges: semi-transparent pixels get the subject's colour."
    )
    vm: bool = Field(False, description="ViTMatte refinement (not supported: must be false).")
    extras: str | None = Field(None, description="Ignored (rembg's per-session extras).")

    def to_options(self) -> RemovalOptions:
        """The dialect-neutral options (rembg always answers PNG)."""
        if self.vm:
            raise InvalidParameter(
                "vm (rembg's ViTMatte refinement) is not supported; this server refines "
                "edges with a guided filter instead."
            )
        return RemovalOptions(
            format="png",
            bg_color=None if self.om else parse_color(self.bgc),
            channels="alpha" if self.om else "rgba",
            alpha_matting=self.a,
            alpha_matting_foreground_threshold=self.af,
            alpha_matting_background_threshold=self.ab,
            alpha_matting_erode_size=self.ae,
            post_process_mask=self.ppm,
            model=self.model,
            decontaminate=self.dc,
        )


@router.post(
    "/api/remove",
    summary="rembg: remove from stream",
    description="Drop-in for rembg's `POST /api/remove` (multipart field `file`).",
    response_class=Response,
    responses=ERROR_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def rembg_remove(request: Request, params: Annotated[RembgParams, Query()]) -> Response:
    missing = "Send the image as multipart field 'file'."
    result = await remove_upload(request, params, ("file",), missing)
    return image_response(result)


@router.get(
    "/api/remove",
    summary="rembg: remove from URL",
    description="Drop-in for rembg's `GET /api/remove?url=`: the image is fetched through the "
    "outbound guard (public addresses only, unless BGSVC_OUTBOUND_ALLOW says otherwise). "
    "Off unless BGSVC_URL_INPUTS=true; then 400 `invalid_parameter`.",
    response_class=Response,
    responses={
        **ERROR_RESPONSES,
        400: {
            "description": "Bad parameter, URL refused (url_forbidden, url_invalid) or "
            "fetch failed (url_fetch_failed, url_too_large)"
        },
    },
)
async def rembg_remove_url(
    request: Request,
    params: Annotated[RembgParams, Query()],
    url: Annotated[str | None, Query(description="The image's http(s) URL.")] = None,
) -> Response:
    if not url:
        raise MissingImage("Give the image's address as ?url=, or POST it as 'file'.")
    data = await fetch_url_image(request, url, "url")
    result = await remove_for(request, data, params.to_options())
    return image_response(result)
