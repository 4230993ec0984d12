"""Jobs on a fleet sharing one Redis, under faults: a node killed with SIGKILL while it runs
items of a batch, Redis killed and restarted mid-batch, and Redis down under sync load.

Every job must end succeeded exactly once: one visible result object each, and the
batch's ``batch.completed`` webhook delivered once (checked by a signature-verifying
receiver on loopback).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from benchmarks.hammer import Hammer

from bgsvc.cluster import Cluster
from tests.cluster.conftest import REMOVE, model_env, record, wait_for
from tests.jobs.conftest import verifying_hook
from tests.outbound.servers import Server, serve
from tests.procs import children
from tests.result_folders import visible

pytestmark = pytest.mark.cluster

SECRET = "whsec_" + base64.b64encode(b"bgsvc-fleet-test-secret-0123").decode()
ITEMS = 30


@pytest.fixture
def receiver() -> Iterator[tuple[Server, list[dict[str, Any]]]]:
    events: list[dict[str, Any]] = []
    with serve({"/hook": verifying_hook(SECRET, events)}) as server:
        yield server, events


def jobs_cluster(make_cluster: Callable[..., Cluster], models: dict[str, Path]) -> Cluster:
    """3 nodes on the slow model (~0.5 s a job), a fast redelivery, webhooks to loopback."""
    return make_cluster(
        nodes=3,
        redis=True,
        **model_env(models, "slow"),
        BGSVC_JOB_REDELIVER_S="4",
        BGSVC_WEBHOOK_SECRET=SECRET,
        BGSVC_OUTBOUND_ALLOW="127.0.0.1",
    )


def submit_batch(cluster: Cluster, images: list[bytes], callback: str) -> dict[str, Any]:
    files = [("file", (f"item-{i:02d}.png", images[i], "image/png")) for i in range(ITEMS)]
    response = httpx.post(
        f"{cluster.url}/batches", files=files, data={"callback_url": callback}, timeout=60
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def batch_status(cluster: Cluster, batch_id: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{cluster.url}/batches/{batch_id}", timeout=10)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def wait_batch(cluster: Cluster, batch_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = batch_status(cluster, batch_id)
        if body is not None and body["status"] == "completed":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def check_each_once(cluster: Cluster, batch: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """Every item succeeded; one result object each; batch.completed delivered once."""
    assert batch["counts"]["succeeded"] == ITEMS, batch["counts"]
    results = Path(str(cluster.config.data_dir)) / "results" / "jobs"

    def leftovers() -> dict[str, list[str]]:
        found = {item["job_id"]: visible(results / item["job_id"]) for item in batch["items"]}
        return {job_id: names for job_id, names in found.items() if names != ["result.png"]}

    # A node removes an item's upload just after recording it succeeded, and the batch
    # reads completed from that record: the last item's upload may still be going.
    deadline = time.monotonic() + 30
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers() == {}
    wait_for(lambda: len(events) >= 1, 30, "batch.completed")
    time.sleep(1.0)  # a second delivery, were there one, would arrive by now
    completed = [e for e in events if e["type"] == "batch.completed"]
    assert len(completed) == 1, events
    assert completed[0]["data"]["id"] == batch["id"]
    assert completed[0]["data"]["counts"]["succeeded"] == ITEMS


def running_owners(client: redis.Redis, job_ids: list[str]) -> dict[str, int]:
    """Running items and the pid of the process running each (owner = host:pid:token)."""
    found: dict[str, int] = {}
    for job_id in job_ids:
        status, owner = client.hmget(f"bgsvc:jobs:job:{job_id}", ["status", "owner"])
        if status == b"running" and owner:
            found[job_id] = int(owner.decode().split(":")[1])
    return found


def test_kill_9_of_the_node_running_batch_items_loses_none_and_runs_each_once(
    make_cluster: Callable[..., Cluster],
    cluster_models: dict[str, Path],
    images: list[bytes],
    receiver: tuple[Server, list[dict[str, Any]]],
) -> None:
    server, events = receiver
    cluster = jobs_cluster(make_cluster, cluster_models)
    assert cluster.redis is not None
    batch = submit_batch(cluster, images, f"{server.base_url}/hook")
    ids = [item["job_id"] for item in batch["items"]]
    probe = redis.Redis.from_url(cluster.redis.url)

    # Kill the node whose process runs an item, as soon as some items are done.
    def some_done_and_one_running() -> bool:
        body = batch_status(cluster, batch["id"])
        return bool(body and body["counts"]["succeeded"] >= 3 and running_owners(probe, ids))

    wait_for(some_done_and_one_running, 120, "3 items done and one running")
    owners = running_owners(probe, ids)
    victim = next(n for n in cluster.nodes if os.getpgid(next(iter(owners.values()))) == n.pid)
    victim_pids = {victim.pid, *children(victim.pid)}
    victim.kill()
    victim.wait(timeout=10)
    killed_at = time.monotonic()
    # The victim's items, as the store had them at its death.
    orphans = {j for j, pid in running_owners(probe, ids).items() if pid in victim_pids}
    assert orphans, owners

    done = wait_batch(cluster, batch["id"])
    took = time.monotonic() - killed_at
    check_each_once(cluster, done, events)
    attempts = {}
    for job_id in ids:
        body = httpx.get(f"{cluster.url}/jobs/{job_id}", timeout=10).json()
        attempts[job_id] = body["attempts"]
    assert all(attempts[j] >= 2 for j in orphans), attempts
    record(
        "jobs_kill_9_mid_batch",
        {
            "items": ITEMS,
            "killed": victim.name,
            "orphaned_items": len(orphans),
            "retried_items": sum(1 for a in attempts.values() if a > 1),
            "batch_done_after_kill_s": round(took, 1),
            "succeeded": done["counts"]["succeeded"],
        },
    )


def test_a_batch_completes_through_a_redis_kill_and_restart(
    make_cluster: Callable[..., Cluster],
    cluster_models: dict[str, Path],
    images: list[bytes],
    receiver: tuple[Server, list[dict[str, Any]]],
) -> None:
    server, events = receiver
    cluster = jobs_cluster(make_cluster, cluster_models)
    batch = submit_batch(cluster, images, f"{server.base_url}/hook")

    def some_done() -> bool:
        body = batch_status(cluster, batch["id"])
        return bool(body and body["counts"]["succeeded"] >= 3)

    wait_for(some_done, 120, "3 items done")
    cluster.stop_redis(kill=True)
    # While Redis is down: submissions and lookups are refused with a retry hint.
    refused = httpx.post(
        f"{cluster.url}/jobs",
        content=images[100],
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "jobs_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    looked_up = httpx.get(f"{cluster.url}/batches/{batch['id']}", timeout=30)
    assert looked_up.status_code == 503
    time.sleep(2.0)
    cluster.start_redis()

    done = wait_batch(cluster, batch["id"])
    check_each_once(cluster, done, events)
    accepted = httpx.post(
        f"{cluster.url}/jobs",
        content=images[101],
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text


def test_with_redis_down_sync_requests_keep_answering_200_at_a_high_rate(
    make_cluster: Callable[..., Cluster], images: list[bytes]
) -> None:
    cluster = make_cluster(nodes=3, redis=True)
    port = int(cluster.url.rsplit(":", 1)[1])
    cluster.stop_redis(kill=True)
    # Cache hits (one image, answered from each node's local cache) at full rate ...
    load = Hammer("127.0.0.1", port, REMOVE, images[0], seconds=20.0, processes=2, threads=3)
    load.start()
    # ... and, meanwhile, images no cache has: each asks the dead Redis first.
    fresh: list[int] = []
    with httpx.Client(timeout=30) as client:
        for body in images[1:301]:
            response = client.post(
                f"{cluster.url}{REMOVE}", files={"file": ("i.png", body, "image/png")}
            )
            fresh.append(response.status_code)
    result = load.join()
    jobs = httpx.post(
        f"{cluster.url}/jobs", content=images[0], headers={"Content-Type": "image/png"}
    )
    errors = sum(
        float(line.rsplit(" ", 1)[1])
        for node in cluster.nodes
        for line in httpx.get(f"{node.url}/metrics").text.splitlines()
        if line.startswith('bgsvc_cache_errors_total{level="redis"}')
    )
    record(
        "sync_with_redis_down",
        {**result.summary(), "fresh_images": len(fresh), "redis_cache_errors": errors},
    )
    assert result.failed == 0, result.summary()
    assert result.total >= 5_000, result.summary()
    assert fresh == [200] * 300
    assert errors >= 1  # the bypass is counted
    assert jobs.status_code == 503 and "retry-after" in jobs.headers
