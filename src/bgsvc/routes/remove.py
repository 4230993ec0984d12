"""POST /remove-background: the native API."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import Field

from bgsvc.options import (
    RemovalOptions,
    parse_color,
    parse_format,
    parse_margin,
    parse_size,
)
from bgsvc.routes.common import (
    ERROR_RESPONSES,
    IMAGE_BODY,
    RemovalParams,
    image_response,
    remove_upload,
)

router = APIRouter(tags=["Background removal"])


class RemoveParams(RemovalParams):
    """Options of /remove-background, accepted as query parameters or form fields."""

    format: str | None = Field(
        None,
        description="Output format: png, webp, jpg, gif, auto or zip; default png, and for an "
        "animated GIF, WebP or PNG the upload's own kind (each frame cut out; png is APNG). "
        "A video (POST /jobs only): webm (the default), mov, mp4 or zip.",
    )
    bg_color: str | None = Field(
        None,
        description="Composite on this colour: #rrggbb, #rrggbbaa, r,g,b[,a] or a CSS name. "
        "jpg without it uses white.",
    )
    channels: Literal["rgba", "alpha"] = Field(
        "rgba", description="rgba: the cutout; alpha: the matte alone as greyscale."
    )
    crop: bool = Field(False, description="Crop to the subject's bounding box.")
    crop_margin: str | None = Field(
        None,
        description="Margin around the crop: 1, 2 or 4 values of N, Npx or N% (of the subject); "
        "capped at 50% of the subject or 500 px.",
    )
    quality: int | None = Field(None, ge=1, le=100, description="Quality for webp and jpg.")
    alpha_matting: bool = Field(False, description="Refine edges with alpha matting (slow).")
    alpha_matting_foreground_threshold: int = Field(240, ge=0, le=255, description="Matting: fg.")
    alpha_matting_background_threshold: int = Field(10, ge=0, le=255, description="Matting: bg.")
    alpha_matting_erode_size: int = Field(10, ge=0, le=100, description="Matting: erosion.")
    post_process_mask: bool = Field(False, description="Smooth the mask's boundary.")
    model: str | None = Field(None, description="Model name from GET /models.")
    size: str | None = Field(
        None,
        description="Result size: full (the source's, up to BGSVC_MAX_OUTPUT_PIXELS), "
        "a remove.bg name (preview, medium, hd, 4k, 50MP) or a number of pixels.",
    )
    refine: bool | None = Field(
        None,
        description="Enlarge the matte guided by the photo's edges (false: bilinear); "
        "default BGSVC_REFINE (true).",
    )
    decontaminate: bool | None = Field(
        None,
        description="Give semi-transparent pixels the subject's estimated colour instead of "
        "the photo's, which carries the old background's; default BGSVC_DECONTAMINATE (true).",
    )
    smooth: bool | None = Field(
        None,
        description="A video's mattes smoothed from frame to frame, so still parts do not "
        "flicker (false: each frame alone, as a still); default BGSVC_VIDEO_SMOOTHING (true). "
        "Stills and animations ignore it.",
    )

    def to_options(self) -> RemovalOptions:
        """The dialect-neutral options."""
        return RemovalOptions(
            format=parse_format(self.format),
            bg_color=parse_color(self.bg_color),
            channels=self.channels,
            crop=self.crop,
            crop_margin=parse_margin(self.crop_margin),
            quality=self.quality,
            alpha_matting=self.alpha_matting,
            alpha_matting_foreground_threshold=self.alpha_matting_foreground_threshold,
            alpha_matting_background_threshold=self.alpha_matting_background_threshold,
            alpha_matting_erode_size=self.alpha_matting_erode_size,
            post_process_mask=self.post_process_mask,
            model=self.model,
            max_output_pixels=parse_size(self.size),
            refine=self.refine,
            decontaminate=self.decontaminate,
            smooth=self.smooth,
            frames="all",
            format_given=bool(self.format and self.format.strip()),
        )


@router.post(
    "/remove-background",
    summary="Remove the background of an image",
    description="Send the image as multipart field `file` (or `image_file`), as a raw body "
    "with an `image/*` content type, or (with BGSVC_URL_INPUTS) as `image_url`, a query "
    "parameter or form field. Options may also be sent as form fields.",
    response_class=Response,
    responses=ERROR_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def remove_background(request: Request, params: Annotated[RemoveParams, Query()]) -> Response:
    missing = "Send the image as multipart field 'file', as an image/* body or as image_url."
    result = await remove_upload(request, params, ("file", "image_file"), missing, "image_url")
    return image_response(result)
