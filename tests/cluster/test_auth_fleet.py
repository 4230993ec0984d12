"""API keys and their limits on a fleet sharing one Redis: a key revoked (with `bgsvc keys
revoke`) is refused by every node at once, and one key's rate limit holds across 3 nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from bgsvc.cluster import Cluster
from tests.cluster.conftest import REMOVE, record

pytestmark = pytest.mark.cluster

PEPPER = "fleet-test-pepper-0123456789"


def keys_cli(cluster: Cluster, *args: str) -> str:
    assert cluster.redis is not None
    env = {**os.environ, "BGSVC_REDIS_URL": cluster.redis.url, "BGSVC_AUTH_PEPPER": PEPPER}
    done = subprocess.run(
        [sys.executable, "-m", "bgsvc", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def auth_cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster(nodes=3, redis=True, BGSVC_AUTH="required", BGSVC_AUTH_PEPPER=PEPPER)


def test_a_key_revoked_once_is_refused_by_every_node_at_once(
    make_cluster: Callable[..., Cluster], images: list[bytes]
) -> None:
    cluster = auth_cluster(make_cluster)
    secret = keys_cli(cluster, "create", "shop")
    files = {"file": ("p.png", images[0], "image/png")}
    with httpx.Client(timeout=30) as client:
        for node in cluster.nodes:
            ok = client.post(f"{node.url}{REMOVE}", files=files, headers={"X-Api-Key": secret})
            assert ok.status_code == 200, ok.text
        keys_cli(cluster, "revoke", "shop")
        for node in cluster.nodes:
            refused = client.post(f"{node.url}{REMOVE}", files=files, headers={"X-Api-Key": secret})
            assert refused.status_code == 403, refused.text
            assert refused.json()["code"] == "forbidden"
        # Through the balancer too, and a secret the fleet never issued is a 401.
        refused = client.post(f"{cluster.url}{REMOVE}", files=files, headers={"X-Api-Key": secret})
        assert refused.status_code == 403
        unknown = client.post(
            f"{cluster.url}{REMOVE}", files=files, headers={"X-Api-Key": "bgsvc_nope"}
        )
        assert unknown.status_code == 401 and "www-authenticate" in unknown.headers


def test_one_key_s_rate_limit_holds_across_three_nodes_within_10_percent(
    make_cluster: Callable[..., Cluster], images: list[bytes]
) -> None:
    cluster = auth_cluster(make_cluster)
    rate_per_min, burst = 300, 5
    secret = keys_cli(
        cluster, "create", "batchy", "--rate", f"{rate_per_min}/min", "--burst", str(burst)
    )
    files = {"file": ("p.png", images[0], "image/png")}
    statuses: list[int] = []
    lock = threading.Lock()
    seconds = 20.0
    start = time.monotonic()

    def client_loop(offset: int) -> None:
        with httpx.Client(timeout=30, headers={"X-Api-Key": secret}) as client:
            i = offset
            while time.monotonic() - start < seconds:
                node = cluster.nodes[i % len(cluster.nodes)]
                i += 1
                status = client.post(f"{node.url}{REMOVE}", files=files).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    elapsed = time.monotonic() - start
    admitted = statuses.count(200)
    expected = burst + rate_per_min / 60 * elapsed
    record(
        "rate_limit_across_3_nodes",
        {
            "policy": f"{rate_per_min}/min burst {burst}",
            "seconds": round(elapsed, 1),
            "requests": len(statuses),
            "admitted": admitted,
            "expected": round(expected, 1),
            "refused_429": statuses.count(429),
            "other": len(statuses) - admitted - statuses.count(429),
        },
    )
    assert set(statuses) <= {200, 429}, set(statuses)
    assert len(statuses) > 3 * expected  # the clients really pushed past the limit
    assert abs(admitted - expected) <= 0.1 * expected, (admitted, expected)
