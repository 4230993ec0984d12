"""/jobs: asynchronous removal (submit, poll, fetch, cancel). The work is in bgsvc.jobs."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from bgsvc.errors import InvalidParameter, MissingImage, WebhooksDisabled
from bgsvc.imaging.video import is_video
from bgsvc.inference.registry import select
from bgsvc.jobs.model import JobRecord
from bgsvc.jobs.notify import check_callback_url
from bgsvc.jobs.queue import check_retry
from bgsvc.jobs.runtime import Jobs
from bgsvc.options import RemovalOptions
from bgsvc.routes.common import (
    IMAGE_BODY,
    app_state,
    auth_of,
    capped_request,
    fetch_url_image,
    parse_params,
    read_upload,
    tenant_of,
)
from bgsvc.routes.remove import RemoveParams

router = APIRouter(tags=["Jobs"])

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def options_from_record(values: dict[str, Any]) -> RemovalOptions:
    """The options a job was submitted with (stored as /remove-background's parameters)."""
    return RemoveParams.model_validate(values).to_options()


async def accepted_submission(
    request: Request, form: dict[str, Any]
) -> tuple[RemoveParams, str | None]:
    """The options and the callback URL of a job or batch submission (query and form).
    Everything that can be refused is refused now, not reported later as a failed job."""
    settings = app_state(request).settings
    callback_url = form.pop("callback_url", None) or request.query_params.get("callback_url")
    params = parse_params(RemoveParams, {**request.query_params, **form})
    select(params.to_options().model, settings)
    if callback_url:
        notifier = jobs_of(request).notifier
        if notifier is None:
            raise WebhooksDisabled("callback_url needs BGSVC_WEBHOOK_SECRET set on the server.")
        if not await notifier.can_sign(tenant_of(request)):
            raise WebhooksDisabled(
                "This API key has no webhook signing secret yet, and the server has no "
                "BGSVC_WEBHOOK_SECRET: give the key one with `bgsvc keys webhook-secret`."
            )
        await check_callback_url(callback_url, settings)
    return params, callback_url or None


def jobs_of(request: Request) -> Jobs:
    jobs: Jobs = request.app.state.jobs
    return jobs


@router.post(
    "/jobs",
    status_code=202,
    summary="Submit a background removal job",
    description="The same image inputs and options as /remove-background, plus an optional "
    "`callback_url` (query or form field) for a signed webhook on completion and an optional "
    "`Idempotency-Key` header. Answers 202 with the job's URLs.",
    responses={
        202: {"description": "Queued (or, for a known Idempotency-Key, the existing job)"},
        429: {"description": "BGSVC_JOB_QUEUE_LIMIT reached; see Retry-After"},
    },
    openapi_extra=IMAGE_BODY,
)
async def submit_job(
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    state = app_state(request)
    settings = state.settings
    limit = settings.max_upload_bytes
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise InvalidParameter("Idempotency-Key: 1 to 255 printable ASCII characters.")
    jobs = jobs_of(request)
    client = request.client.host if request.client else ""
    context = auth_of(request)
    earlier = None
    if idempotency_key is not None:
        # A retry gets its job without being charged: at the end of a quota, the job it
        # paid for, not a 402.
        earlier = await jobs.queue.find_idempotent(
            idempotency_key, client=client, tenant=tenant_of(request)
        )
    if earlier is None and context is not None:
        # The credit the auth layer takes before a body is read (it leaves it to this
        # route when a key may name an earlier job): a refused request costs no read.
        await context.charge(1)
    upload = capped_request(request, limit, "upload")
    data, form = await read_upload(upload, ("file", "image_file"))
    url = form.pop("image_url", None) or request.query_params.get("image_url")
    if data is not None and url:
        raise InvalidParameter("Send the image or image_url, not both.")
    if data is None and not url:
        raise MissingImage(
            "Send the image as multipart field 'file', as an image/* body or as image_url."
        )
    params, callback_url = await accepted_submission(request, form)
    if data is None:
        # Fetched now, not by the worker: a refused or broken URL is the submitter's 400.
        data = await fetch_url_image(request, str(url), "image_url")
    options = params.model_dump(mode="json")
    if earlier is not None:
        check_retry(earlier, data, options, callback_url)
        return _accepted(earlier)
    metered = context is not None and context.metered
    frames: int | None = None
    if metered or is_video(data):
        # A credit a frame, charged at submission like the job's own credit. A video's
        # headers are read now, metered or not: one beyond the video limits, or that no
        # decoder can open, is the submitter's 4xx, not a job that fails later.
        frames = await state.service.frame_count(data, params.to_options(), settings.job_max_frames)
    if context is not None and metered and frames is not None:
        await context.charge(frames)
    record, created = await jobs.queue.submit(
        data,
        options,
        client=client,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
        tenant=tenant_of(request),
        credits=0 if context is None else context.charged,
    )
    if not created and context is not None:
        # Its job was made between the lookup above and now (two retries at once): it
        # was charged when it was submitted.
        await context.refund()
    return _accepted(record)


def _accepted(record: JobRecord) -> JSONResponse:
    status_url = f"/jobs/{record.id}"
    body = {
        "id": record.id,
        "status": record.public_status,
        "status_url": status_url,
        "result_url": f"{status_url}/result",
    }
    return JSONResponse(body, status_code=202, headers={"Location": status_url})


@router.get("/jobs/{job_id}", summary="A job's status")
async def job_status(request: Request, job_id: str) -> JSONResponse:
    record = await jobs_of(request).queue.get(job_id, tenant_of(request))
    return JSONResponse(record.public())


@router.get(
    "/jobs/{job_id}/result",
    summary="A finished job's image",
    response_class=Response,
    responses={
        200: {
            "content": {
                "image/png": {},
                "image/webp": {},
                "image/jpeg": {},
                "video/webm": {},
                "video/quicktime": {},
                "video/mp4": {},
            }
        },
        307: {"description": "Presigned URL of the result (S3 with BGSVC_S3_PRESIGN)"},
        409: {"description": "Not finished yet (job_not_finished), or failed or canceled"},
        410: {"description": "The result expired"},
    },
)
async def job_result(request: Request, job_id: str) -> Response:
    found = await jobs_of(request).queue.result(job_id, tenant_of(request))
    if isinstance(found, str):
        return RedirectResponse(found, status_code=307)
    return Response(found.data, media_type=found.content_type)


@router.delete(
    "/jobs/{job_id}",
    summary="Cancel a queued job, or delete a finished one and its result",
    responses={
        200: {"description": "Canceled; the job's status"},
        204: {"description": "Deleted"},
        409: {"description": "Running: it cannot be canceled"},
    },
)
async def delete_job(request: Request, job_id: str) -> Response:
    record = await jobs_of(request).queue.cancel_or_delete(job_id, tenant_of(request))
    if record is None:
        return Response(status_code=204)
    app_state(request).metrics.jobs.labels("canceled").inc()
    return JSONResponse(record.public())
