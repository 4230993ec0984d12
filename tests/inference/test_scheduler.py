from __future__ import annotations

import asyncio
import threading

import pytest

from bgsvc.errors import Overloaded
from bgsvc.inference.scheduler import Scheduler


def test_admits_up_to_concurrency_plus_queue_then_refuses_with_retry_after() -> None:
    scheduler = Scheduler(max_concurrency=1, max_queue=2)
    tickets = [scheduler.try_admit() for _ in range(3)]
    with pytest.raises(Overloaded) as info:
        scheduler.try_admit()
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    tickets[0].close()
    scheduler.try_admit()  # a place freed up
    scheduler.shutdown()


def test_timed_out_request_keeps_its_place_until_inference_really_ends() -> None:
    scheduler = Scheduler(max_concurrency=1, max_queue=0)
    release = threading.Event()

    async def scenario() -> None:
        ticket = scheduler.try_admit()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await scheduler.run(ticket, release.wait)
        ticket.close()
        # The thread still runs: admitting another would exceed the bound.
        with pytest.raises(Overloaded):
            scheduler.try_admit()
        release.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if scheduler.admitted == 0:
                break
        assert scheduler.admitted == 0

    asyncio.run(scenario())
    scheduler.shutdown()
