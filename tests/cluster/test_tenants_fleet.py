"""Two tenants through nginx on 3 nodes sharing one Redis, 1,000 jobs, one node killed
with SIGKILL while they run: every job ends succeeded for its owner, and not one of the
other tenant's reads, downloads or deletes finds anything (0 cross reads)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bgsvc.auth.base import ApiKey
from bgsvc.auth.keys import digest_of, new_secret
from bgsvc.auth.redis import RedisKeyStore
from bgsvc.cluster import Cluster
from tests.cluster.conftest import record, wait_for

pytestmark = pytest.mark.cluster

PEPPER = "fleet-tenant-pepper-0123456789"
PER_TENANT = 500
BATCHES = 4  # of 100 items each, plus 100 single jobs per tenant
QUOTA = 10_000


def add_keys(redis_url: str) -> dict[str, str]:
    store = RedisKeyStore(redis_url, 2.0)
    secrets: dict[str, str] = {}
    try:
        for name in ("tenant-a", "tenant-b"):
            secret = new_secret()
            store.add(ApiKey(name=name, digest=digest_of(secret, PEPPER), quota=QUOTA))
            secrets[name] = secret
    finally:
        store.close()
    return secrets


def submit_all(base: str, secret: str, images: list[bytes], offset: int) -> list[str]:
    """100-item batches and single jobs, PER_TENANT in all: the job ids."""
    headers = {"X-Api-Key": secret}
    ids: list[str] = []
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for b in range(BATCHES):
            files = [
                ("file", (f"{i}.png", images[(offset + b * 100 + i) % len(images)], "image/png"))
                for i in range(100)
            ]
            response = client.post("/batches", files=files)
            assert response.status_code == 202, response.text
            assert response.headers["X-Credits-Charged"] == "100"
            ids += [item["job_id"] for item in response.json()["items"]]
        for i in range(PER_TENANT - BATCHES * 100):
            image = images[(offset + 7 * i) % len(images)]
            response = client.post("/jobs", files={"file": ("p.png", image, "image/png")})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


def probe(base: str, secret: str, own: list[str], others: list[str]) -> dict[str, Any]:
    """One pass: the status of each own job, and every way into each of the other's."""
    statuses: dict[str, str] = {}
    cross: list[tuple[str, int]] = []
    with httpx.Client(base_url=base, headers={"X-Api-Key": secret}, timeout=30) as client:
        for job_id in own:
            response = client.get(f"/jobs/{job_id}")
            ok = response.status_code == 200
            statuses[job_id] = response.json()["status"] if ok else str(response.status_code)
        for job_id in others:
            for method, url in (
                ("GET", f"/jobs/{job_id}"),
                ("GET", f"/jobs/{job_id}/result"),
                ("DELETE", f"/jobs/{job_id}"),
            ):
                answer = client.request(method, url)
                if answer.status_code != 404:
                    cross.append((url, answer.status_code))
    return {"statuses": statuses, "cross": cross}


def test_two_tenants_on_a_fleet_read_only_their_own_jobs_through_a_node_kill(
    make_cluster: Callable[..., Cluster], images: list[bytes]
) -> None:
    cluster = make_cluster(
        nodes=3,
        redis=True,
        BGSVC_AUTH="required",
        BGSVC_AUTH_PEPPER=PEPPER,
        BGSVC_JOB_REDELIVER_S="4",
        BGSVC_JOB_QUEUE_LIMIT="2000",
        BGSVC_JOB_QUEUE_LIMIT_PER_KEY="1000",
    )
    assert cluster.redis is not None
    secrets = add_keys(cluster.redis.url)
    a, b = secrets["tenant-a"], secrets["tenant-b"]
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(submit_all, cluster.url, a, images, 0)
        fb = pool.submit(submit_all, cluster.url, b, images, 200)
        ids_a, ids_b = fa.result(), fb.result()
    assert len(set(ids_a)) == len(set(ids_b)) == PER_TENANT
    # A node dies while the backlog runs: its jobs go to the other two.
    victim = cluster.nodes[1]
    with redis.Redis.from_url(cluster.redis.url) as client:
        unfinished = sum(int(client.zcard(f"bgsvc:jobs:{s}")) for s in ("queued", "running"))
    victim.kill()
    killed_at = time.monotonic()
    cross: list[tuple[str, int]] = []
    passes = 0
    pending = {"a": set(ids_a), "b": set(ids_b)}

    def settled() -> bool:
        nonlocal passes
        passes += 1
        with ThreadPoolExecutor(2) as pool:
            ra = pool.submit(probe, cluster.url, a, sorted(pending["a"]), ids_b[::5])
            rb = pool.submit(probe, cluster.url, b, sorted(pending["b"]), ids_a[::5])
            results = {"a": ra.result(), "b": rb.result()}
        for name, result in results.items():
            cross.extend(result["cross"])
            failed = {j: s for j, s in result["statuses"].items() if s not in STILL_GOING}
            assert all(s == "succeeded" for s in failed.values()), failed
            pending[name] -= set(failed)
        return not pending["a"] and not pending["b"]

    wait_for(settled, 300, "every job of both tenants succeeded", poll=0.5)
    took = time.monotonic() - started
    # Every way into every job of the other tenant, once all are done.
    with ThreadPoolExecutor(2) as pool:
        ra = pool.submit(probe, cluster.url, a, [], ids_b)
        rb = pool.submit(probe, cluster.url, b, [], ids_a)
        cross += ra.result()["cross"] + rb.result()["cross"]
    assert cross == []
    # B's deletes deleted nothing: A reads each of its results.
    with httpx.Client(base_url=cluster.url, headers={"X-Api-Key": a}, timeout=30) as client:
        fetched = [client.get(f"/jobs/{j}/result").status_code for j in ids_a[::10]]
    assert fetched == [200] * len(fetched)
    results = Path(str(cluster.config.data_dir)) / "results" / "tenants"
    assert {p.name for p in results.iterdir()} == {"tenant-a", "tenant-b"}
    record(
        "tenants_fleet_kill_9",
        {
            "jobs": 2 * PER_TENANT,
            "cross_requests": 2 * 3 * PER_TENANT + 2 * 3 * (PER_TENANT // 5) * passes,
            "cross_reads": len(cross),
            "killed": victim.name,
            "unfinished_at_kill": unfinished,
            "all_done_s": round(took, 1),
            "done_after_kill_s": round(time.monotonic() - killed_at, 1),
        },
    )


STILL_GOING = {"queued", "running", "502", "503", "504"}
