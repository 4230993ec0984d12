from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from standardwebhooks import Webhook

from bgsvc.config import Settings
from bgsvc.outbound.client import OutboundClient
from bgsvc.outbound.signing import WebhookSigner, generate_secret
from bgsvc.outbound.webhooks import (
    JOB_SUCCEEDED,
    DeliveryAttempt,
    DeliveryResult,
    RetrySchedule,
    WebhookSender,
)
from tests.outbound.conftest import run
from tests.outbound.servers import Handler, Server, serve

SECRET = generate_secret()


class Sleeps:
    """Records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _receiver(statuses: list[int], headers: dict[str, str] | None = None) -> Callable[..., None]:
    """Answers with the given statuses in turn (the last one repeats), verifying every
    signature first with the Standard Webhooks library, as a receiver would."""
    verified: list[object] = []

    def route(handler: Handler) -> None:
        seen = handler.server.state.seen[-1]
        verified.append(Webhook(SECRET).verify(seen.body, seen.headers))
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        handler.reply(status, b"", headers)

    route.verified = verified  # type: ignore[attr-defined]
    return route


@pytest.fixture
def deliver(
    make_client: Callable[..., OutboundClient],
) -> Iterator[Callable[..., tuple[DeliveryResult, Sleeps]]]:
    def go(
        url: str, *, allow: str = "127.0.0.1", schedule: RetrySchedule | None = None, **kw: object
    ) -> tuple[DeliveryResult, Sleeps]:
        sleeps = Sleeps()

        async def scenario() -> DeliveryResult:
            async with make_client(allow=allow) as client:
                sender = WebhookSender(
                    client,
                    WebhookSigner(SECRET),
                    schedule or RetrySchedule(attempts=5, base_s=1.0, max_s=8.0),
                    sleep=sleeps,
                    rng=random.Random(7),
                )
                return await sender.deliver(url, JOB_SUCCEEDED, {"id": "job_1"}, **kw)  # type: ignore[arg-type]

        return run(scenario()), sleeps

    yield go


def _bodies(server: Server) -> list[dict[str, object]]:
    return [json.loads(s.body) for s in server.seen]


def test_a_delivery_is_signed_so_the_receiver_library_verifies_it(
    deliver: Callable[..., tuple[DeliveryResult, Sleeps]],
) -> None:
    route = _receiver([204])
    with serve({"/hook": route}) as server:
        result, sleeps = deliver(f"{server.base_url}/hook")
    assert result.outcome == "delivered" and result.delivered
    assert [(a.number, a.status, a.error) for a in result.attempts] == [(1, 204, None)]
    payload = route.verified[0]  # type: ignore[attr-defined]
    assert payload["type"] == "job.succeeded" and payload["data"] == {"id": "job_1"}
    headers = server.seen[0].headers
    assert (
        headers["webhook-id"] == result.event_id and headers["content-type"] == "application/json"
    )
    assert sleeps.waits == []


def test_a_500_then_a_200_is_two_recorded_attempts_of_the_same_event(
    deliver: Callable[..., tuple[DeliveryResult, Sleeps]],
) -> None:
    route = _receiver([500, 200])
    seen: list[DeliveryAttempt] = []

    async def on_attempt(attempt: DeliveryAttempt) -> None:
        seen.append(attempt)

    with serve({"/hook": route}) as server:
        result, sleeps = deliver(f"{server.base_url}/hook", on_attempt=on_attempt)
    assert result.outcome == "delivered"
    assert [(a.number, a.status) for a in result.attempts] == [(1, 500), (2, 200)]
    assert list(result.attempts) == seen
    assert all(a.duration_s >= 0 and a.started_at > 1.6e9 for a in result.attempts)
    assert len(sleeps.waits) == 1 and 0 <= sleeps.waits[0] <= 1.0
    ids = {s.headers["webhook-id"] for s in server.seen}
    assert ids == {result.event_id} and len(route.verified) == 2  # type: ignore[attr-defined]
    assert _bodies(server)[0] == _bodies(server)[1]


def test_a_410_stops_the_retries(deliver: Callable[..., tuple[DeliveryResult, Sleeps]]) -> None:
    with serve({"/hook": _receiver([410])}) as server:
        result, sleeps = deliver(f"{server.base_url}/hook")
    assert result.outcome == "gone" and [a.status for a in result.attempts] == [410]
    assert len(server.seen) == 1 and sleeps.waits == []


def test_failures_are_retried_until_the_attempts_run_out_within_the_backoff_bounds(
    deliver: Callable[..., tuple[DeliveryResult, Sleeps]],
) -> None:
    schedule = RetrySchedule(attempts=4, base_s=2.0, max_s=5.0)
    with serve({"/hook": _receiver([503])}) as server:
        result, sleeps = deliver(f"{server.base_url}/hook", schedule=schedule)
    assert result.outcome == "exhausted" and [a.status for a in result.attempts] == [503] * 4
    assert len(sleeps.waits) == 3
    assert all(0 <= w <= cap for w, cap in zip(sleeps.waits, [2.0, 4.0, 5.0], strict=True))


def test_a_receivers_retry_after_is_honoured_up_to_the_longest_wait(
    deliver: Callable[..., tuple[DeliveryResult, Sleeps]],
) -> None:
    with serve({"/hook": _receiver([429, 204], {"Retry-After": "6"})}) as server:
        result, sleeps = deliver(f"{server.base_url}/hook")
    assert result.delivered and sleeps.waits == [6.0]
    with serve({"/hook": _receiver([429, 204], {"Retry-After": "600"})}) as server:
        _, sleeps = deliver(f"{server.base_url}/hook")
    assert sleeps.waits == [8.0]


def test_a_redirecting_receiver_is_not_followed_and_counts_as_a_failure(
    deliver: Callable[..., tuple[DeliveryResult, Sleeps]],
) -> None:
    def moved(handler: Handler) -> None:
        handler.reply(307, b"", {"Location": "/other"})

    with serve({"/hook": moved, "/other": _receiver([204])}) as server:
        result, _ = deliver(
            f"{server.base_url}/hook", schedule=RetrySchedule(attempts=2, base_s=0, max_s=0)
        )
    assert result.outcome == "exhausted" and [a.status for a in result.attempts] == [307, 307]
    assert {s.path for s in server.seen} == {"/hook"}


def test_a_forbidden_callback_is_one_refused_attempt_and_an_unreachable_one_is_retried(
    deliver: Callable[..., tuple[DeliveryResult, Sleeps]],
) -> None:
    refused, sleeps = deliver("http://169.254.169.254/hook")
    assert refused.outcome == "refused" and sleeps.waits == []
    assert [(a.status, a.error) for a in refused.attempts] == [(None, "url_forbidden")]
    with serve({}) as server:
        closed = server.base_url
    unreachable, sleeps = deliver(
        f"{closed}/hook", schedule=RetrySchedule(attempts=3, base_s=1, max_s=1)
    )
    assert unreachable.outcome == "exhausted" and len(sleeps.waits) == 2
    assert [a.error for a in unreachable.attempts] == ["url_fetch_failed"] * 3
    assert all(a.message and "could not be reached" in a.message for a in unreachable.attempts)


def test_the_default_schedule_makes_at_least_5_attempts_over_about_10_minutes() -> None:
    settings = Settings()
    schedule = RetrySchedule(
        settings.webhook_attempts, settings.webhook_backoff_base_s, settings.webhook_backoff_max_s
    )
    assert schedule.attempts >= 5
    assert [schedule.cap(n) for n in range(1, schedule.attempts)] == [
        15.0, 30.0, 60.0, 120.0, 240.0, 300.0, 300.0,
    ]  # fmt: skip
    # Full jitter: the waits average half their bounds.
    assert 8 * 60 <= schedule.longest_s / 2 <= 12 * 60
    rng = random.Random(1)
    delays = [schedule.delay(3, rng) for _ in range(200)]
    assert all(0 <= d <= 60.0 for d in delays) and len(set(delays)) == 200


def test_a_sender_without_a_secret_is_refused(make_client: Callable[..., OutboundClient]) -> None:
    async def scenario() -> None:
        async with make_client() as client:
            with pytest.raises(ValueError, match="BGSVC_WEBHOOK_SECRET"):
                WebhookSender.from_settings(Settings(), client)
            sender = WebhookSender.from_settings(Settings(webhook_secret=SECRET), client)
            assert isinstance(sender, WebhookSender)

    run(scenario())


class _StalledReceiver:
    """An OutboundClient stand-in whose POSTs hang until released, counting how many are
    in flight at once, by path."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.most_in_all = 0

    async def post(self, url: str, **_: object) -> object:
        path = url.rsplit("/", 1)[-1]
        self.in_flight[path] = self.in_flight.get(path, 0) + 1
        self.most[path] = max(self.most.get(path, 0), self.in_flight[path])
        self.most_in_all = max(self.most_in_all, sum(self.in_flight.values()))
        try:
            await self.release.wait()
        finally:
            self.in_flight[path] -= 1
        return SimpleNamespace(status=204, headers={})


def _stalled_sender(
    in_flight: tuple[int, int], slot_wait_s: float = 30.0
) -> tuple[_StalledReceiver, WebhookSender]:
    receiver = _StalledReceiver()
    sender = WebhookSender(
        receiver,  # type: ignore[arg-type]
        WebhookSigner(SECRET),
        RetrySchedule(attempts=1),
        in_flight=in_flight,
        slot_wait_s=slot_wait_s,
    )
    return receiver, sender


def _delivery(sender: WebhookSender, key: str) -> asyncio.Future[DeliveryResult]:
    return asyncio.ensure_future(
        sender.deliver(f"http://r/{key}", JOB_SUCCEEDED, {"id": "j"}, key=key)
    )


def test_a_key_s_stalled_receiver_holds_its_lane_and_all_keys_the_process_s_places() -> None:
    # Keys whose receivers hang (or whose jobs fail at once, each with a callback) open at
    # most their lane's sockets each, and all keys together the process's; a delivery past
    # both waits its turn and goes once a place frees.
    async def scenario() -> tuple[_StalledReceiver, DeliveryResult]:
        receiver, sender = _stalled_sender((6, 2))
        hammering = [_delivery(sender, key) for key in "abcd" for _ in range(10)]
        await asyncio.sleep(0.05)
        late = _delivery(sender, "e")
        await asyncio.sleep(0.05)
        assert not late.done()
        receiver.release.set()
        result = await late
        await asyncio.gather(*hammering)
        return receiver, result

    receiver, result = run(scenario())
    assert result.delivered
    assert max(receiver.most[k] for k in "abcd") == 2
    assert receiver.most_in_all == 6
    assert receiver.in_flight == dict.fromkeys("abcde", 0)


def test_deliveries_of_one_key_past_its_lane_wait_and_do_not_refuse() -> None:
    async def scenario() -> tuple[_StalledReceiver, list[DeliveryResult]]:
        receiver, sender = _stalled_sender((32, 4))
        tasks = [_delivery(sender, "a") for _ in range(12)]
        other = _delivery(sender, "b")
        await asyncio.sleep(0.05)
        assert receiver.in_flight == {"a": 4, "b": 1}
        receiver.release.set()
        return receiver, [*await asyncio.gather(*tasks), await other]

    receiver, results = run(scenario())
    assert all(r.delivered for r in results) and len(results) == 13
    assert receiver.most == {"a": 4, "b": 1}


def test_an_attempt_that_waits_past_its_limit_for_a_place_fails_and_holds_nothing() -> None:
    # Waiting deliveries must not pile up without end behind a receiver that hangs: past
    # the wait, the attempt is a recorded failure (retried on the schedule), and the
    # key's lane is gone once nothing uses it.
    async def scenario() -> tuple[_StalledReceiver, WebhookSender, DeliveryResult]:
        receiver, sender = _stalled_sender((32, 1), slot_wait_s=0.05)
        stuck = _delivery(sender, "a")
        await asyncio.sleep(0.01)
        waited = await _delivery(sender, "a")
        receiver.release.set()
        await stuck
        return receiver, sender, waited

    receiver, sender, waited = run(scenario())
    assert waited.outcome == "exhausted"
    assert [(a.status, a.error) for a in waited.attempts] == [(None, "webhook_busy")]
    assert receiver.most == {"a": 1}
    assert sender._lanes._lanes == {}
