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


def test_a_ticket_set_aside_frees_its_place_and_is_refused_if_the_place_went_meanwhile() -> None:
    scheduler = Scheduler(max_concurrency=1, max_queue=0)
    fetching = scheduler.try_admit()
    with pytest.raises(Overloaded), fetching.aside():
        assert scheduler.admitted == 0
        other = scheduler.try_admit()  # the freed place is taken meanwhile
    assert scheduler.admitted == 1
    fetching.close()  # it holds nothing: the other request's place stays counted
    assert scheduler.admitted == 1
    other.close()
    assert scheduler.admitted == 0


def test_overlapping_asides_give_the_place_back_once_and_take_it_once() -> None:
    scheduler = Scheduler(max_concurrency=1, max_queue=1)
    ticket = scheduler.try_admit()
    image, backdrop = ticket.aside(), ticket.aside()
    image.__enter__()
    backdrop.__enter__()
    assert scheduler.admitted == 0
    image.__exit__(None, None, None)
    assert scheduler.admitted == 0  # the backdrop is still being fetched
    backdrop.__exit__(None, None, None)
    assert scheduler.admitted == 1
    ticket.close()
    assert scheduler.admitted == 0


def test_a_failed_fetch_takes_the_place_back_and_a_response_ended_meanwhile_keeps_none() -> None:
    scheduler = Scheduler(max_concurrency=1, max_queue=0)
    ticket = scheduler.try_admit()
    with pytest.raises(RuntimeError), ticket.aside():
        raise RuntimeError("the origin hung up")
    assert scheduler.admitted == 1
    ticket.close()
    assert scheduler.admitted == 0
    # A response that ended while a fetch of its own was still running (a backdrop).
    ticket = scheduler.try_admit()
    with ticket.aside():
        ticket.close()
        assert scheduler.admitted == 0
    assert scheduler.admitted == 0
    assert scheduler.try_admit() is not None
