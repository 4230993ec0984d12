"""Two tenants on one node, in both job modes: what one key can see, spend and crowd out.

Tenant B plays the hostile second customer against A's jobs and batches: every probe of
someone else's ids answers as for ids that never existed (404, nothing disclosed, nothing
changed), idempotency keys are each tenant's own, a batch costs a credit per image, and
one tenant's backlog leaves the others their room and their turns."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc.auth.base import ApiKey
from bgsvc.auth.factory import open_store
from bgsvc.auth.keys import digest_of, new_secret, new_webhook_salt
from bgsvc.inference.scheduler import Ticket
from bgsvc.jobs.model import JobRecord, JobStatus
from bgsvc.jobs.queue import JobQueue
from bgsvc.outbound.signing import generate_secret
from tests.conftest import encode_image, subject_image
from tests.jobs.conftest import jobs_of, state_of
from tests.outbound.servers import serve

PEPPER = "tenant-test-pepper-0123456789"
QUOTA = 1000


@dataclass
class Tenant:
    """One API key's view of the service: every call carries its key."""

    name: str
    client: TestClient
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.secret}

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(url, headers=self.headers, **kwargs)

    def delete(self, url: str) -> httpx.Response:
        return self.client.delete(url, headers=self.headers)

    def post(self, url: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return self.client.post(url, headers={**self.headers, **(headers or {})}, **kw)

    def submit(self, image: bytes, **kwargs: Any) -> httpx.Response:
        return self.post("/jobs", files={"file": ("photo.png", image, "image/png")}, **kwargs)

    def batch(self, images: list[bytes], **kwargs: Any) -> httpx.Response:
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        return self.post("/batches", files=files, **kwargs)

    def credits_left(self) -> int:
        body = self.get("/v1.0/account").json()
        left: int = body["data"]["attributes"]["credits"]["total"]
        return left

    def wait(self, url: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 15.0
        while True:
            body: dict[str, Any] = self.get(url).json()
            if done(body) or time.monotonic() > deadline:
                assert done(body), body
                return body
            time.sleep(0.02)


@pytest.fixture
def tenants(
    jobs_client: Callable[..., TestClient],
) -> Iterator[Callable[..., tuple[Tenant, Tenant]]]:
    """Keys ``a`` and ``b`` (remove and jobs scopes, 1000 credits a month each) on one app
    with keys required and the real limits store of the mode (SQLite or Redis)."""

    def factory(**overrides: Any) -> tuple[Tenant, Tenant]:
        # These tests count credits to the unit. Under the default 0.5 s budget for a Redis
        # call, one stall of this long-running test process (seen once in a full run: a
        # connect that timed out) made the limits store look down for a second, and the
        # fail-open default then admitted a charge unrecorded: a flake, not a finding.
        settings = {"redis_socket_timeout_s": 5.0, **overrides}
        client = jobs_client(auth="required", auth_pepper=PEPPER, **settings)
        store = open_store(state_of(client).settings)
        pair = []
        try:
            for name in ("a", "b"):
                secret = new_secret()
                store.add(ApiKey(name=name, digest=digest_of(secret, PEPPER), quota=QUOTA))
                pair.append(Tenant(name, client, secret))
        finally:
            store.close()
        return pair[0], pair[1]

    yield factory


@pytest.fixture
def photos() -> list[bytes]:
    return [encode_image(subject_image((60 + i, 40))) for i in range(12)]


def succeeded(body: dict[str, Any]) -> bool:
    return body.get("status") == "succeeded"


def completed(body: dict[str, Any]) -> bool:
    return body.get("status") == "completed"


def test_another_tenants_job_is_not_found_for_status_result_and_delete(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    a, b = tenants()
    job = a.submit(photos[0]).json()
    a.wait(job["status_url"], succeeded)
    probes = [
        b.get(job["status_url"]),
        b.get(job["result_url"]),
        b.get(job["result_url"], follow_redirects=False),
        b.delete(job["status_url"]),
    ]
    assert [p.status_code for p in probes] == [404] * 4
    # The same answer as for an id that never existed: nothing tells B that A's job exists.
    missing = b.get("/jobs/job_" + "0" * 32).json()
    for probe in probes:
        error = probe.json()
        assert error["code"] == missing["code"] == "job_not_found"
    # B's delete changed nothing: A still has the job and its result.
    assert a.get(job["status_url"]).json()["status"] == "succeeded"
    assert a.get(job["result_url"]).status_code == 200


def test_an_id_with_a_suffix_reads_no_other_record_of_the_store(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    # Redis keeps a job's webhook attempts at job:<id>:wh: an id with that suffix, looked
    # up, hit a list where a hash was expected (503 for a job that exists, 404 for one that
    # does not), which told another tenant the id was real.
    a, b = tenants()
    job = a.submit(photos[0]).json()
    batch = a.batch(photos[1:2]).json()
    a.wait(job["status_url"], succeeded)
    a.wait(batch["status_url"], completed)
    queue = jobs_of(a.client).queue

    async def note_attempt() -> None:
        backends = await queue.open(create=False)
        assert backends is not None
        await backends.jobs.add_webhook_attempt(job["id"], {"attempt": 1})

    a.client.portal.call(note_attempt)  # type: ignore[union-attr]
    for suffix in (":wh", ":items", "%0A", "/../x", "%3Awh"):
        for who in (a, b):
            for probe in (
                who.get(job["status_url"] + suffix),
                who.delete(job["status_url"] + suffix),
                who.get(batch["status_url"] + suffix),
            ):
                assert probe.status_code in (404, 405), (suffix, probe.status_code, probe.text)
                if probe.status_code == 404:
                    assert probe.json()["code"] in ("job_not_found", "batch_not_found", "not_found")
    assert a.get(job["status_url"]).json()["status"] == "succeeded"
    assert a.get(batch["status_url"]).json()["status"] == "completed"


def test_another_tenants_batch_is_not_found_for_status_zip_and_delete(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    a, b = tenants()
    batch = a.batch(photos[:3]).json()
    a.wait(batch["status_url"], completed)
    probes = [b.get(batch["status_url"]), b.get(batch["result_url"]), b.delete(batch["status_url"])]
    assert [p.status_code for p in probes] == [404, 404, 404]
    assert {p.json()["code"] for p in probes} == {"batch_not_found"}
    # The items are jobs of A's too: B cannot reach them one by one either.
    for item in batch["items"]:
        assert b.get(f"/jobs/{item['job_id']}").status_code == 404
        assert b.delete(f"/jobs/{item['job_id']}").status_code == 404
    zipped = a.get(batch["result_url"])
    assert zipped.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()) == 3


def test_a_callback_url_is_shown_to_its_owner_only(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes], hold_sync: Any
) -> None:
    a, b = tenants(webhook_secret=generate_secret(), outbound_allow="127.0.0.1")
    hold_sync(a.client)  # queued, so no delivery to the closed port outlives the test
    url = "http://127.0.0.1:9/hook?token=s3cret"
    job = a.submit(photos[0], data={"callback_url": url}).json()
    assert a.get(job["status_url"]).json()["callback_url"] == url
    seen = b.get(job["status_url"])
    assert seen.status_code == 404
    assert "s3cret" not in seen.text


def test_idempotency_keys_are_each_tenants_own(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes], hold_sync: Any
) -> None:
    a, b = tenants()
    hold_sync(a.client)  # jobs stay queued: nothing here depends on timing
    key = {"Idempotency-Key": "order-1234"}
    first = a.submit(photos[0], headers=key)
    assert first.status_code == 202
    # B sends A's key with A's image: a job of B's own, not A's.
    same = b.submit(photos[0], headers=key)
    assert same.status_code == 202
    assert same.json()["id"] != first.json()["id"]
    # B sends A's key with another image: accepted, so B learns nothing of A's keys.
    other = b.submit(photos[1], headers={"Idempotency-Key": "order-5678"})
    taken = a.submit(photos[2], headers={"Idempotency-Key": "order-5678"})
    assert (other.status_code, taken.status_code) == (202, 202)
    # A's own retry still finds A's job, and costs no second credit.
    before = a.credits_left()
    again = a.submit(photos[0], headers=key)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["X-Credits-Charged"] == "0"
    assert a.credits_left() == before


def test_an_idempotent_retry_with_another_callback_url_is_refused(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes], hold_sync: Any
) -> None:
    a, _ = tenants(webhook_secret=generate_secret(), outbound_allow="127.0.0.1")
    hold_sync(a.client)
    key = {"Idempotency-Key": "k-1"}
    first = a.submit(photos[0], headers=key, data={"callback_url": "http://127.0.0.1:9/one"})
    assert first.status_code == 202
    other = a.submit(photos[0], headers=key, data={"callback_url": "http://127.0.0.1:9/two"})
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


def test_a_batch_costs_one_credit_per_image(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    a, b = tenants()
    response = a.batch(photos[:10])
    assert response.status_code == 202
    assert response.headers["X-Credits-Charged"] == "10"
    a.wait(response.json()["status_url"], completed)
    assert a.credits_left() == QUOTA - 10
    assert b.credits_left() == QUOTA


def test_an_animation_in_a_batch_costs_a_credit_a_frame_as_a_job_does(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    # Every frame of an animation goes through the model: at a credit an item, a batch of
    # long GIFs would buy hundreds of frames for one credit each.
    a, _ = tenants()
    frames = [Image.new("RGB", (40, 30), (i * 20, 0, 0)) for i in range(12)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    response = a.batch([buf.getvalue(), photos[0]])
    assert response.status_code == 202
    assert response.headers["X-Credits-Charged"] == "13"
    a.wait(response.json()["status_url"], completed)
    assert a.credits_left() == QUOTA - 13


def test_a_batch_the_quota_cannot_cover_is_refused_whole(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes], hold_sync: Any
) -> None:
    a, _ = tenants()
    hold_sync(a.client)
    limits = a.client.app.state.limits  # type: ignore[attr-defined]
    a.client.portal.call(limits.consume_quota, "a", QUOTA, QUOTA - 5)  # type: ignore[union-attr]
    assert a.credits_left() == 5
    refused = a.batch(photos[:6])
    assert refused.status_code == 402
    assert refused.json()["code"] == "quota_exceeded"
    assert refused.headers["X-Credits-Charged"] == "0"
    assert a.credits_left() == 5  # nothing charged, nothing queued
    stats = a.client.portal.call(jobs_store(a).stats)  # type: ignore[union-attr]
    assert stats.unfinished == 0
    accepted = a.batch(photos[:5])
    assert accepted.status_code == 202
    assert accepted.headers["X-Credits-Charged"] == "5"
    assert a.credits_left() == 0


def jobs_store(tenant: Tenant) -> Any:
    queue = tenant.client.app.state.jobs.queue  # type: ignore[attr-defined]
    backends = tenant.client.portal.call(queue.open, True)  # type: ignore[union-attr]
    return backends.jobs


def test_batch_items_that_fail_or_are_canceled_give_their_credit_back(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    a, _ = tenants()
    broken = b"\x89PNG\r\n\x1a\n not really a png"
    response = a.batch([photos[0], broken, photos[1], broken])
    assert response.headers["X-Credits-Charged"] == "4"
    body = a.wait(response.json()["status_url"], completed)
    assert body["counts"]["succeeded"] == 2 and body["counts"]["failed"] == 2
    assert a.credits_left() == QUOTA - 2


def test_no_subject_to_crop_to_keeps_its_credit_where_the_model_ran_for_it(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    # "No subject" is the model's answer, known only once it ran: were its credit given
    # back, crop=true on an empty picture would buy forward passes for nothing (five ran
    # on a key of one credit).
    a, _ = tenants()
    empty = [encode_image(Image.new("RGB", (64 + i, 64), (5, 5, 5))) for i in range(3)]
    sync = a.post("/remove-background?crop=true", files={"file": ("e.png", empty[0], "image/png")})
    assert sync.status_code == 422 and sync.json()["code"] == "no_foreground"
    assert sync.headers["X-Credits-Charged"] == "1"
    assert a.credits_left() == QUOTA - 1
    job = a.post("/jobs?crop=true", files={"file": ("e.png", empty[1], "image/png")}).json()
    done = a.wait(job["status_url"], lambda body: body["status"] == "failed")
    assert done["error"]["code"] == "no_foreground"
    assert a.credits_left() == QUOTA - 2
    batch = a.batch([empty[2], photos[0]], params={"crop": "true"}).json()
    a.wait(batch["status_url"], completed)
    assert a.credits_left() == QUOTA - 4
    # A failure before the model ran still gives its credit back.
    broken = a.post("/remove-background", files={"file": ("b.png", b"\x89PNG broken")})
    assert broken.status_code == 415 and broken.headers["X-Credits-Charged"] == "0"
    assert a.credits_left() == QUOTA - 4


def test_canceled_jobs_and_batch_items_give_their_credit_back(
    tenants: Callable[..., tuple[Tenant, Tenant]],
    photos: list[bytes],
    hold_sync: Callable[[TestClient], list[Ticket]],
) -> None:
    a, _ = tenants()
    tickets = hold_sync(a.client)
    job = a.submit(photos[0]).json()
    batch = a.batch(photos[1:4]).json()
    assert a.credits_left() == QUOTA - 4
    assert a.delete(job["status_url"]).status_code == 200
    assert a.delete(batch["status_url"]).status_code == 204
    assert a.credits_left() == QUOTA
    for ticket in tickets:
        ticket.close()


def test_one_tenant_filling_its_queue_share_leaves_the_others_room(
    tenants: Callable[..., tuple[Tenant, Tenant]],
    photos: list[bytes],
    hold_sync: Callable[[TestClient], list[Ticket]],
) -> None:
    a, b = tenants(job_queue_limit=20, job_queue_limit_per_key=8)
    hold_sync(a.client)
    assert a.batch(photos[:6]).status_code == 202
    assert a.submit(photos[6]).status_code == 202
    assert a.submit(photos[7]).status_code == 202
    full = [a.submit(photos[8]), a.batch(photos[:2])]
    for response in full:
        assert response.status_code == 429
        assert response.json()["code"] == "job_queue_full"
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["X-Credits-Charged"] == "0"
    assert b.submit(photos[9]).status_code == 202
    assert b.batch(photos[:7]).status_code == 202
    # The whole queue still holds the node to its own limit: 8 + 8 of 20, room for 4.
    assert b.batch(photos[:5]).status_code == 429


def test_a_tenants_job_waits_for_one_of_another_tenants_backlog_not_all_of_it(
    tenants: Callable[..., tuple[Tenant, Tenant]],
    photos: list[bytes],
    hold_sync: Callable[[TestClient], list[Ticket]],
) -> None:
    a, b = tenants()
    held = hold_sync(a.client)
    batch = a.batch(photos[:8]).json()
    job = b.submit(photos[9]).json()
    for ticket in held:
        ticket.close()
    b_started = datetime.fromisoformat(b.wait(job["status_url"], succeeded)["started_at"])
    a.wait(batch["status_url"], completed)
    a_started = sorted(
        datetime.fromisoformat(a.get(f"/jobs/{item['job_id']}").json()["started_at"])
        for item in batch["items"]
    )
    # Queued behind eight of A's, B's job took the turn after A's first.
    assert b_started <= a_started[1]


def test_results_are_stored_under_their_tenant(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    a, _ = tenants()
    job = a.submit(photos[0]).json()
    a.wait(job["status_url"], succeeded)
    record = a.client.portal.call(jobs_store(a).get, job["id"])  # type: ignore[union-attr]
    assert record.tenant == "a"
    assert record.input_key.startswith(f"tenants/a/jobs/{job['id']}/")
    assert record.result_key.startswith(f"tenants/a/jobs/{job['id']}/result.")


def test_a_callback_no_secret_could_sign_is_refused_at_submission(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    a, _ = tenants(outbound_allow="127.0.0.1")  # no BGSVC_WEBHOOK_SECRET
    callback = {"callback_url": "http://127.0.0.1:9/hook"}
    refused = a.submit(photos[0], data=callback)  # a key made without a secret of its own
    assert refused.status_code == 400
    assert refused.json()["code"] == "webhooks_disabled"
    # A key with a secret of its own may ask for a callback on the same server.
    secret = new_secret()
    store = open_store(state_of(a.client).settings)
    try:
        key = ApiKey(name="c", digest=digest_of(secret, PEPPER), webhook_salt=new_webhook_salt())
        store.add(key)
    finally:
        store.close()
    c = Tenant("c", a.client, secret)
    assert c.submit(photos[0], data=callback).status_code == 202


def test_concurrent_submissions_never_take_a_tenant_past_its_share(
    tenants: Callable[..., tuple[Tenant, Tenant]],
    photos: list[bytes],
    hold_sync: Callable[[TestClient], list[Ticket]],
) -> None:
    a, b = tenants(job_queue_limit=12, job_queue_limit_per_key=5)
    hold_sync(a.client)

    def send(i: int) -> int:
        if i % 3 == 0:
            return a.batch(photos[:2]).status_code
        return a.submit(photos[i % len(photos)]).status_code

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(24)))
    assert set(answers) <= {202, 429}, answers
    mine = a.client.portal.call(jobs_store(a).tenant_unfinished, "a")  # type: ignore[union-attr]
    assert mine <= 5
    assert b.batch(photos[:5]).status_code == 202  # B's share is whole


def test_an_idempotent_retry_finds_its_job_when_the_share_is_full(
    tenants: Callable[..., tuple[Tenant, Tenant]],
    photos: list[bytes],
    hold_sync: Callable[[TestClient], list[Ticket]],
) -> None:
    a, _ = tenants(job_queue_limit_per_key=2)
    hold_sync(a.client)
    key = {"Idempotency-Key": "retry-me"}
    first = a.submit(photos[0], headers=key).json()
    assert a.submit(photos[1]).status_code == 202
    assert a.submit(photos[2]).status_code == 429
    again = a.submit(photos[0], headers=key)
    assert (again.status_code, again.json()["id"]) == (202, first["id"])


def test_an_idempotent_retry_finds_its_job_when_the_quota_is_spent(
    tenants: Callable[..., tuple[Tenant, Tenant]],
    photos: list[bytes],
    hold_sync: Callable[[TestClient], list[Ticket]],
) -> None:
    # The retry is not a new job: it costs nothing, so an empty quota does not refuse it.
    a, b = tenants(url_inputs=True, outbound_allow="127.0.0.1")
    hold_sync(a.client)
    key = {"Idempotency-Key": "paid-once"}
    first = a.submit(photos[0], headers=key).json()
    limits = a.client.app.state.limits  # type: ignore[attr-defined]
    a.client.portal.call(limits.consume_quota, "a", QUOTA, QUOTA - 1)  # type: ignore[union-attr]
    assert a.credits_left() == 0
    again = a.submit(photos[0], headers=key)
    assert (again.status_code, again.json()["id"]) == (202, first["id"])
    assert again.headers["X-Credits-Charged"] == "0"
    assert a.submit(photos[1]).status_code == 402  # a new job still pays
    unknown = a.submit(photos[1], headers={"Idempotency-Key": "never-sent"})
    assert (unknown.status_code, unknown.json()["code"]) == (402, "quota_exceeded")
    assert unknown.headers["X-Credits-Charged"] == "0"
    # A key that names no job is refused before anything is read or fetched for it.
    with serve(
        {"/photo.png": lambda h: h.reply(200, photos[1], {"Content-Type": "image/png"})}
    ) as server:
        by_url = a.client.post(
            "/jobs",
            data={"image_url": f"{server.base_url}/photo.png"},
            headers={**a.headers, "Idempotency-Key": "by-url"},
        )
        assert (by_url.status_code, by_url.json()["code"]) == (402, "quota_exceeded")
        assert server.seen == []
    # Another image under the key is refused as before, and B's same key is B's own.
    assert a.submit(photos[2], headers=key).json()["code"] == "idempotency_key_reused"
    theirs = b.submit(photos[0], headers=key)
    assert theirs.status_code == 202 and theirs.json()["id"] != first["id"]
    assert theirs.headers["X-Credits-Charged"] == "1"


def test_credits_are_refunded_only_within_the_month_they_were_charged_in() -> None:
    refunds: list[tuple[str, int]] = []

    async def refund(tenant: str, credits: int) -> None:
        refunds.append((tenant, credits))

    now = [1_700_000_000.0]  # 2023-11-14 UTC
    queue = JobQueue(
        lambda: None,  # type: ignore[arg-type,return-value]
        lambda: False,
        queue_limit=10,
        concurrency=1,
        keep_originals=False,
        clock=lambda: now[0],
    )
    queue.refund = refund
    job = JobRecord(
        id="job_x",
        status=JobStatus.FAILED,
        created_at=now[0],
        options={},
        input_key="",
        fingerprint="",
        tenant="a",
        credits=1,
    )
    asyncio.run(queue.give_back(job))
    now[0] += 20 * 86400  # December: November's quota is closed
    asyncio.run(queue.give_back(job))
    assert refunds == [("a", 1)]


def test_one_tenants_cached_results_are_not_another_tenants_hits(
    tenants: Callable[..., tuple[Tenant, Tenant]], photos: list[bytes]
) -> None:
    a, b = tenants()
    files = {"file": ("photo.png", photos[0], "image/png")}
    answers = [t.post("/remove-background", files=files) for t in (a, a, b, b)]
    assert [r.status_code for r in answers] == [200] * 4
    # A hit would tell B, by its header or its speed, that someone sent this exact image.
    assert [r.headers["X-Cache"] for r in answers] == ["MISS", "HIT", "MISS", "HIT"]
    assert answers[0].content == answers[2].content


def test_an_animation_costs_one_credit_per_frame_sync_and_as_a_job(
    tenants: Callable[..., tuple[Tenant, Tenant]],
) -> None:
    from tests.routes.test_animated import animation

    a, b = tenants()
    clip = animation("GIF", count=4)
    sync = a.post("/remove-background", files={"file": ("clip.gif", clip, "image/gif")})
    assert sync.status_code == 200
    assert sync.headers["X-Credits-Charged"] == "4"
    job = a.post("/jobs", files={"file": ("clip.gif", clip, "image/gif")})
    assert job.status_code == 202
    assert job.headers["X-Credits-Charged"] == "4"
    a.wait(job.json()["status_url"], succeeded)
    assert a.credits_left() == QUOTA - 8
    assert b.credits_left() == QUOTA


def test_an_animation_the_quota_cannot_cover_is_refused_before_any_frame_runs(
    tenants: Callable[..., tuple[Tenant, Tenant]],
) -> None:
    from tests.routes.test_animated import animation

    a, _ = tenants()
    limits = a.client.app.state.limits  # type: ignore[attr-defined]
    a.client.portal.call(limits.consume_quota, "a", QUOTA, QUOTA - 3)  # type: ignore[union-attr]
    clip = animation("GIF", count=4)
    for url in ("/remove-background", "/jobs"):
        refused = a.post(url, files={"file": ("clip.gif", clip, "image/gif")})
        assert refused.status_code == 402
        assert refused.json()["code"] == "quota_exceeded"
        assert refused.headers["X-Credits-Charged"] == "0"
    assert a.credits_left() == 3
