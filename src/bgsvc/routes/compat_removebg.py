"""remove.bg's API: POST /v1.0/removebg with its fields, headers and error body."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import replace
from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from bgsvc.errors import InvalidParameter, MissingImage
from bgsvc.options import (
    RemovalOptions,
    parse_color,
    parse_format,
    parse_margin,
    parse_placement,
    parse_roi,
    parse_size,
)
from bgsvc.routes.common import (
    ERROR_RESPONSES,
    RemovalParams,
    fetch_url_image,
    image_response,
    parse_params,
    read_upload_with,
    remove_for,
    result_headers,
)

router = APIRouter(tags=["remove.bg compatibility"])

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image_file": {"type": "string", "format": "binary"},
                        "image_file_b64": {"type": "string"},
                        "image_url": {"type": "string"},
                        "size": {"type": "string", "default": "auto"},
                        "format": {"type": "string", "enum": ["auto", "png", "jpg", "webp", "zip"]},
                        "bg_color": {"type": "string"},
                        "crop": {"type": "boolean"},
                        "crop_margin": {"type": "string"},
                        "channels": {"type": "string", "enum": ["rgba", "alpha"]},
                        "roi": {"type": "string", "default": "0% 0% 100% 100%"},
                        "bg_image_file": {"type": "string", "format": "binary"},
                        "bg_image_url": {"type": "string"},
                        "scale": {"type": "string", "default": "original"},
                        "position": {"type": "string", "default": "original"},
                    },
                }
            },
            "application/json": {"schema": {"type": "object"}},
            "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
        },
    }
}


class RemoveBgParams(RemovalParams):
    """The remove.bg fields this server honours."""

    size: str = Field("auto")
    type: str | None = Field(None, description="Ignored: one model serves every subject type.")
    type_level: str | None = Field(None, description="Ignored.")
    format: str = Field("auto")
    bg_color: str | None = None
    crop: bool = False
    crop_margin: str | None = None
    channels: Literal["rgba", "alpha"] = "rgba"
    roi: str | None = Field(
        None, description="x1 y1 x2 y2 in px or %: outside it the result is transparent."
    )
    scale: str | None = Field(None, description="original, or 10%-100% of the canvas.")
    position: str | None = Field(None, description="original, center, or x% [y%].")
    semitransparency: bool = Field(
        True, description="false: semi-transparent pixels keep the photo's own colour."
    )
    add_shadow: bool = False

    def to_options(self) -> RemovalOptions:
        """The dialect-neutral options."""
        if self.size.strip().isdigit():
            raise InvalidParameter(f"Unknown size {self.size!r}.")
        return RemovalOptions(
            format=parse_format(self.format),
            bg_color=parse_color(self.bg_color),
            channels=self.channels,
            crop=self.crop,
            crop_margin=parse_margin(self.crop_margin),
            max_output_pixels=parse_size(self.size),
            # remove.bg's own colour correction of semi-transparent pixels.
            decontaminate=None if self.semitransparency else False,
            roi=parse_roi(self.roi),
            placement=parse_placement(self.scale, self.position),
        )


def _json_fields(body: bytes) -> dict[str, str]:
    """remove.bg's JSON body as form fields (true/false as their form spelling)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError: JSON's own errors, bad UTF-8, a number past Python's digit limit;
        # RecursionError: arrays nested thousands deep.
        raise InvalidParameter("The JSON body could not be parsed.") from None
    if not isinstance(payload, dict):
        raise InvalidParameter("The JSON body must be an object.")
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in payload.items()}


async def _read_request(
    request: Request,
) -> tuple[bytes | None, dict[str, str], dict[str, bytes]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        # Off the event loop: a body up to the upload limit (an image in base64) takes a
        # tenth of a second to parse.
        return None, await anyio.to_thread.run_sync(_json_fields, await request.body()), {}
    return await read_upload_with(request, ("image_file",), ("bg_image_file",))


async def _image_bytes(request: Request, data: bytes | None, fields: dict[str, str]) -> bytes:
    b64 = fields.pop("image_file_b64", None)
    url = fields.pop("image_url", None)
    if sum(1 for given in (data is not None, bool(b64), bool(url)) if given) > 1:
        raise InvalidParameter("Send one of image_file, image_file_b64 or image_url.")
    if url:
        return await fetch_url_image(request, url, "image_url")
    if data is None and b64:
        try:
            # A data: URL's prefix dropped; decoded off the event loop (25 MB of it).
            encoded = b64.partition(",")[2] if "," in b64 else b64
            return await anyio.to_thread.run_sync(base64.b64decode, encoded)
        except (binascii.Error, ValueError):
            raise InvalidParameter("image_file_b64 is not valid base64.") from None
    if data is None:
        raise MissingImage("Send image_file, image_file_b64 or image_url.")
    return data


@router.post(
    "/v1.0/removebg",
    summary="remove.bg: remove the background",
    description="Drop-in for remove.bg's `POST /v1.0/removebg`. Answers image bytes, or JSON "
    "with `result_b64` when the client sends `Accept: application/json`.",
    response_class=Response,
    responses=ERROR_RESPONSES,
    openapi_extra=_BODY_DOC,
)
async def removebg(request: Request) -> Response:
    data, fields, files = await _read_request(request)
    # Options are checked before anything is fetched: a bad one costs no outbound request.
    options = parse_params(RemoveBgParams, {**request.query_params, **fields}).to_options()
    bg_url = fields.pop("bg_image_url", None) or request.query_params.get("bg_image_url")
    bg_file = files.get("bg_image_file")
    if bg_url and bg_file is not None:
        raise InvalidParameter("Send bg_image_file or bg_image_url, not both.")
    if bg_file is None and fields.get("bg_image_file"):
        raise InvalidParameter("bg_image_file must be a file upload.")
    # Checked against the other options before either image is fetched.
    probe = replace(options, bg_image=b"") if bg_url or bg_file is not None else options
    if bg_url:
        # Fetched side by side, so two slow hosts hold the request's place for one
        # outbound timeout, not two; a failure cancels the other fetch.
        photo = asyncio.ensure_future(_image_bytes(request, data, fields))
        backdrop = asyncio.ensure_future(fetch_url_image(request, bg_url, "bg_image_url"))
        try:
            image, bg_file = await asyncio.gather(photo, backdrop)
        except BaseException:
            photo.cancel()
            backdrop.cancel()
            raise
    else:
        image = await _image_bytes(request, data, fields)
    if bg_file is not None:
        # Its digest (the result cache's key) is a hash of up to an upload's size: off
        # the event loop.
        options = await anyio.to_thread.run_sync(lambda: replace(probe, bg_image=bg_file))
    result = await remove_for(request, image, options)
    headers = {**result_headers(result), "X-Credits-Charged": "0"}
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(
            {
                "data": {
                    "result_b64": base64.b64encode(result.output.body).decode("ascii"),
                    "foreground_top": result.output.box.top,
                    "foreground_left": result.output.box.left,
                    "foreground_width": result.output.box.width,
                    "foreground_height": result.output.box.height,
                }
            },
            headers=headers,
        )
    response = image_response(result)
    response.headers["X-Credits-Charged"] = "0"
    return response
