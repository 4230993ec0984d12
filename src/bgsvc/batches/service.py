"""Submitting a batch through the job queue, and its completion webhook."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread

from bgsvc.batches.intake import Item
from bgsvc.errors import BatchNotFound, BatchRunning
from bgsvc.jobs import segments as cut_video
from bgsvc.jobs.base import JobStore, NoRoom
from bgsvc.jobs.model import (
    BatchItem,
    BatchRecord,
    JobRecord,
    JobStatus,
    new_batch_id,
    new_job_id,
    well_formed_id,
)
from bgsvc.jobs.notify import Notifier
from bgsvc.jobs.queue import ORIGINAL_TYPE, JobQueue, fingerprint, input_key, visible
from bgsvc.outbound.webhooks import BATCH_COMPLETED, DeliveryAttempt


async def submit_batch(
    queue: JobQueue,
    items: list[Item],
    options: dict[str, Any],
    *,
    client: str,
    callback_url: str | None,
    tenant: str | None = None,
    credits: list[int] | None = None,
) -> BatchRecord:
    """One queued job per item, all or none (``credits``: what each was charged). Raises
    JobQueueFull when the queue, or the tenant's share of it, has less room than the
    batch has items (a part of a batch is never queued)."""
    backends = await queue.open(create=True)
    assert backends is not None
    await queue.check_room(backends, tenant, len(items))
    batch_id = new_batch_id()
    now = queue.clock()
    records = []
    charged = credits or [0] * len(items)
    for item, item_credits in zip(items, charged, strict=True):
        job_id = new_job_id()
        records.append(
            JobRecord(
                id=job_id,
                status=JobStatus.QUEUED,
                created_at=now,
                options=options,
                input_key=input_key(job_id, tenant),
                fingerprint=fingerprint(item.data, options),
                client=client,
                batch_id=batch_id,
                tenant=tenant,
                credits=item_credits,
            )
        )
    batch = BatchRecord(
        id=batch_id,
        created_at=now,
        items=[BatchItem(i.name, r.id) for i, r in zip(items, records, strict=True)],
        client=client,
        callback_url=callback_url,
        tenant=tenant,
    )
    results = backends.results
    # Uploads first, as for single jobs: no runner claims a job whose input is missing.
    for item, record in zip(items, records, strict=True):
        await anyio.to_thread.run_sync(results.put, record.input_key, item.data, ORIGINAL_TYPE)
    try:
        await backends.jobs.create_batch(batch, records, queue.room)
    except BaseException as exc:
        for record in records:
            await anyio.to_thread.run_sync(results.delete, record.input_key)
        if isinstance(exc, NoRoom):
            raise queue.full(exc, len(records)) from None
        raise
    queue.wake.set()
    return batch


async def get_batch(
    queue: JobQueue, batch_id: str, viewer: str | None = None
) -> tuple[BatchRecord, dict[str, JobRecord]]:
    """The batch and its items' records by job id, as ``viewer`` (the requesting key's
    name) may see it. Raises BatchNotFound for another key's batch, and for a batch none
    of whose items has a record any more (purged after expiry, or deleted one by one): the
    store purges such a record on its next sweep."""
    if not well_formed_id(batch_id):
        raise BatchNotFound(f"No batch {batch_id!r}.")
    backends = await queue.open(create=False)
    batch = None if backends is None else await backends.jobs.get_batch(batch_id)
    if batch is None or backends is None or not visible(batch.tenant, viewer):
        raise BatchNotFound(f"No batch {batch_id!r}.")
    jobs = await backends.jobs.batch_jobs(batch_id)
    if not jobs:
        raise BatchNotFound(f"No batch {batch_id!r}.")
    return batch, {j.id: j for j in jobs}


async def delete_batch(
    queue: JobQueue,
    batch_id: str,
    *,
    notifier: Notifier | None,
    background: set[asyncio.Task[None]],
    on_canceled: Callable[[], None],
    viewer: str | None = None,
) -> None:
    """Cancel the batch's queued items; then, when none is running, delete every item
    (objects and record) and the batch. Raises BatchNotFound, or BatchRunning (the queued
    items stay canceled; a retry once the running ones end deletes).

    When the cancellations complete the batch, its ``batch.completed`` is built here,
    before anything is deleted, and sent as a task of ``background`` (the runner's, which
    its shutdown waits for): a runner reading the batch later would find it gone."""
    batch, records = await get_batch(queue, batch_id, viewer)
    backends = queue.backends
    assert backends is not None
    for record in records.values():
        if record.status is JobStatus.QUEUED and await backends.jobs.cancel(
            record.id, queue.clock()
        ):
            on_canceled()
            await queue.give_back(record)
            if not queue.keep_originals:
                await anyio.to_thread.run_sync(backends.results.delete, record.input_key)
    send = await _completion(backends.jobs, batch_id, queue.clock(), notifier)
    if send is not None:
        task = asyncio.create_task(send())
        background.add(task)
        task.add_done_callback(background.discard)
    # Counted after the cancellations: a job a runner claimed meanwhile, or one queued
    # again for a retry, is running as far as the client is concerned.
    items = await backends.jobs.batch_jobs(batch_id)
    running = sum(1 for j in items if not j.status.finished)
    if running:
        raise BatchRunning(
            f"{running} of the {len(batch.items)} items of {batch_id} are running; "
            "the queued ones are canceled. Delete again once they end."
        )
    for record in items:
        for key in (record.result_key, record.input_key):
            if key:
                await anyio.to_thread.run_sync(backends.results.delete, key)
        if record.segments:
            await cut_video.delete_parts(backends.jobs, backends.results, record.id)
        await backends.jobs.delete(record.id)
    await backends.jobs.delete_batch(batch_id)


async def _completion(
    jobs: JobStore, batch_id: str, now: float, notifier: Notifier | None
) -> Callable[[], Coroutine[Any, Any, None]] | None:
    """When every item of the batch is final and nobody marked it completed yet: marks it
    and gives the one caller that did the delivery of its ``batch.completed`` (None when
    there is no callback), its payload read now."""
    batch = await jobs.complete_batch(batch_id, now)
    if batch is None or batch.callback_url is None or notifier is None:
        return None
    records = {j.id: j for j in await jobs.batch_jobs(batch.id)}
    data = batch.public(records)
    data.pop("webhook_attempts", None)
    data.pop("callback_url", None)
    url = batch.callback_url

    async def store(attempt: DeliveryAttempt) -> None:
        await jobs.add_batch_webhook_attempt(batch_id, attempt.as_dict())

    async def send() -> None:
        await notifier.deliver(
            url,
            BATCH_COMPLETED,
            data,
            event_id=f"msg_{batch_id}",
            on_attempt=store,
            tenant=batch.tenant,
        )

    return send


async def item_finished(
    jobs: JobStore, record: JobRecord, now: float, notifier: Notifier | None
) -> None:
    """After an item became final: when it was the batch's last, send ``batch.completed``
    (once, whichever runner finished the last item)."""
    if record.batch_id is None:
        return
    send = await _completion(jobs, record.batch_id, now, notifier)
    if send is not None:
        await send()
