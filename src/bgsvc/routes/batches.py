"""/batches: many images, one job each, one zip of the results. Work in bgsvc.batches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from bgsvc.batches.archive import result_names, stream_zip
from bgsvc.batches.intake import Item, Limits, base_name, check_count, is_zip, unzip
from bgsvc.batches.service import delete_batch, get_batch, submit_batch
from bgsvc.errors import (
    BatchTooLarge,
    BgsvcError,
    JobHasNoResult,
    JobNotFinished,
    MissingImage,
    UploadTooLarge,
)
from bgsvc.imaging.video import is_video
from bgsvc.jobs.model import JobStatus
from bgsvc.routes.common import app_state, auth_of, capped_request, tenant_of
from bgsvc.routes.jobs import accepted_submission, jobs_of

router = APIRouter(tags=["Jobs"])


async def _read_items(request: Request, limits: Limits) -> tuple[list[Item], dict[str, str]]:
    try:
        form = await request.form(max_files=limits.max_items + 1, max_fields=64)
    except HTTPException as exc:
        raise BatchTooLarge(f"A batch holds at most {limits.max_items} images.") from exc
    files: list[UploadFile] = []
    others: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key == "file":
                files.append(value)
        elif key == "file":
            raise MissingImage("Field 'file' must be a file upload.")
        else:
            others[key] = value
    try:
        check_count(len(files), limits)
        items: list[Item] = []
        for index, upload in enumerate(files):
            data = await upload.read()
            name = upload.filename or ""
            if len(files) == 1 and is_zip(name, upload.content_type or "", data):
                max_entries = app_state(request).settings.effective_batch_max_zip_entries
                # Off the loop: a zip's directory alone can take seconds to parse.
                items = await anyio.to_thread.run_sync(unzip, data, limits, max_entries)
                break
            if len(data) > limits.max_item_bytes:
                raise UploadTooLarge(f"{name} exceeds {limits.max_item_bytes} bytes.")
            items.append(Item(base_name(name, index), data))
    finally:
        await form.close()
    if not items:
        raise MissingImage("Send images as repeated multipart fields 'file', or one zip.")
    return items, others


# A video's headers are read by a media child at intake (0.2 s each, measured), in the
# probe pool POST /jobs shares: a batch of a hundred would hold the batch intake place and
# every tenant's video submissions for 20 s, past its key's request rate.
BATCH_MAX_VIDEOS = 10


@router.post(
    "/batches",
    status_code=202,
    summary="Submit a batch of images, one job each",
    description="Repeated multipart `file` fields, or one zip in `file`; the options of "
    "/remove-background apply to every image; optional `callback_url` for a signed "
    "`batch.completed` webhook when every item is final.",
    responses={
        202: {"description": "Queued"},
        413: {"description": "Too many images, or a zip that unpacks too large"},
        429: {"description": "The job queue has less room than the batch; see Retry-After"},
    },
)
async def submit(request: Request) -> JSONResponse:
    state = app_state(request)
    settings = state.settings
    limit = settings.batch_max_bytes
    limits = Limits(settings.batch_max_items, settings.max_upload_bytes, limit)
    upload = capped_request(request, limit, "batch")
    items, form = await _read_items(upload, limits)
    params, callback_url = await accepted_submission(request, form)
    jobs = jobs_of(request)
    context = auth_of(request)
    metered = context is not None and context.metered
    # A credit a frame, as for a job of its own: every frame of an animation runs, so an
    # item counts its frames, read from its header before anything is queued. A video's
    # headers are read metered or not: one beyond the video limits is the batch's 4xx.
    options = params.to_options()
    videos = sum(1 for item in items if is_video(item.data))
    if videos > BATCH_MAX_VIDEOS:
        raise BatchTooLarge(
            f"A batch holds at most {BATCH_MAX_VIDEOS} videos, not {videos}: send the rest "
            "as batches or jobs of their own."
        )

    async def count(data: bytes) -> int:
        if is_video(data):
            return await state.service.frame_count(data, options, settings.job_max_frames)
        if not metered:
            return 1
        try:
            return await state.service.frame_count(data, options, settings.job_max_frames)
        except BgsvcError as exc:
            if exc.status >= 500:
                raise
            return 1  # a broken image fails as its own item, and gives its credit back

    frames = [await count(item.data) for item in items]
    if context is not None:
        # All of them covered before anything is queued (402 for the whole batch
        # otherwise); each item that fails or is canceled gives its back.
        await context.charge(sum(frames))
    batch = await submit_batch(
        jobs.queue,
        items,
        params.model_dump(mode="json"),
        client=request.client.host if request.client else "",
        callback_url=callback_url,
        tenant=tenant_of(request),
        # Each item's credits, to give back should it fail: none where the charge went
        # unrecorded (the limits store down, failing open).
        credits=frames if context is not None and context.charged >= sum(frames) > 0 else None,
    )
    status_url = f"/batches/{batch.id}"
    body = {
        "id": batch.id,
        "status": "queued",
        "status_url": status_url,
        "result_url": f"{status_url}/result.zip",
        "items": [{"name": i.name, "job_id": i.job_id} for i in batch.items],
    }
    return JSONResponse(body, status_code=202, headers={"Location": status_url})


@router.get("/batches/{batch_id}", summary="A batch's status: counts and every item")
async def batch_status(request: Request, batch_id: str) -> JSONResponse:
    batch, records = await get_batch(jobs_of(request).queue, batch_id, tenant_of(request))
    return JSONResponse(batch.public(records))


@router.delete(
    "/batches/{batch_id}",
    status_code=204,
    summary="Cancel a batch's queued items, and delete the batch with its results",
    description="Queued items are canceled first (batch.completed is sent as for any batch "
    "whose last items are canceled); when no item is running, every item's objects and "
    "records and the batch go.",
    responses={
        204: {"description": "Deleted"},
        409: {"description": "Items are running (batch_running); the queued ones are canceled"},
    },
)
async def batch_delete(request: Request, batch_id: str) -> Response:
    jobs = jobs_of(request)
    await delete_batch(
        jobs.queue,
        batch_id,
        notifier=jobs.notifier,
        background=jobs.runner.webhooks,
        on_canceled=app_state(request).metrics.jobs.labels("canceled").inc,
        viewer=tenant_of(request),
    )
    return Response(status_code=204)


@router.get(
    "/batches/{batch_id}/result.zip",
    summary="A zip of the batch's finished images",
    response_class=Response,
    responses={
        200: {
            "content": {"application/zip": {}},
            "description": "The succeeded items so far; Batch-Pending counts the rest to come",
        },
        409: {"description": "No item succeeded yet (job_not_finished) or ever (job_no_result)"},
    },
)
async def batch_result(request: Request, batch_id: str) -> Response:
    queue = jobs_of(request).queue
    batch, records = await get_batch(queue, batch_id, tenant_of(request))
    done = [
        (item, records[item.job_id])
        for item in batch.items
        if item.job_id in records and records[item.job_id].status is JobStatus.SUCCEEDED
    ]
    pending = sum(1 for r in records.values() if not r.status.finished)
    if not done:
        if pending:
            raise JobNotFinished(f"No item of {batch_id} has finished yet.", retry_after=1)
        raise JobHasNoResult(f"No item of {batch_id} succeeded.")
    names = result_names([i.name for i, _ in done], [r.content_type or "" for _, r in done])
    backends = queue.backends
    assert backends is not None
    results = backends.results

    def loader(key: str | None) -> Callable[[], Awaitable[bytes | None]]:
        async def load() -> bytes | None:
            if key is None:
                return None
            found = await anyio.to_thread.run_sync(results.get, key)
            return None if found is None else found.data

        return load

    entries = [(name, loader(r.result_key)) for name, (_, r) in zip(names, done, strict=True)]
    return StreamingResponse(
        stream_zip(entries),
        media_type="application/zip",
        headers={
            "Batch-Pending": str(pending),
            "Content-Disposition": f'attachment; filename="{batch_id}.zip"',
        },
    )
