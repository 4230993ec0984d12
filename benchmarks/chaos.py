"""Chaos run: the real default model on a local fleet (3 nodes behind nginx, supervised)
under steady closed-loop load, with ``kill -9`` of a random node every ``interval``
seconds while the supervisor restarts it. Every request must succeed: nginx re-sends a
request whose node died to another node.

Layout: 3 nodes x 1 gunicorn worker x 1 ONNX Runtime thread. On a 2-core machine the
three nodes compete for the cores (the fleet does about one image per second in all),
and a restarting node's model load competes with the two serving nodes.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.load import Target, closed_loop
from benchmarks.nodes import free_port
from benchmarks.stats import percentile

NODES = 3
CLIENTS = 4
# Per-request client timeout. nginx may spend up to proxy_next_upstream_timeout (75 s)
# trying nodes, and then wait proxy_read_timeout (35 s) for the last one's answer
# (deploy/nginx/nginx.conf): the client must outwait both, or it would count as a
# failure a request that nginx was still going to answer.
CLIENT_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Outcome:
    """One request: start (s since the load began), latency, status (0: no answer)."""

    at: float
    latency: float
    status: int
    served_by: str
    error: str


def steady_load(
    host: str, port: int, bodies: Sequence[bytes], clients: int, seconds: float
) -> list[Outcome]:
    """``clients`` closed-loop clients (keep-alive) posting ``bodies`` in turn for
    ``seconds``; every request counted, with the error text of any that failed."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    began = time.monotonic()
    counter = iter(range(10**9))

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT_S)
        headers = {"Content-Type": "image/jpeg"}
        while time.monotonic() - began < seconds:
            with lock:
                n = next(counter)
            body = bodies[n % len(bodies)]
            start = time.monotonic()
            served, error = "", ""
            try:
                conn.request("POST", "/remove-background?format=png", body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                served = response.getheader("X-Served-By") or ""
                if status != 200:
                    error = f"HTTP {status} {response.reason}"
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                status, error = 0, f"{type(exc).__name__}: {exc}"
            outcome = Outcome(start - began, time.monotonic() - start, status, served, error)
            with lock:
                outcomes.append(outcome)
        conn.close()

    pool = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + CLIENT_TIMEOUT_S + 30)
    return sorted(outcomes, key=lambda o: o.at)


def summarise_chaos(
    outcomes: Sequence[Outcome], kills: Sequence[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Counts, latency percentiles, failures (with time and error) and the kill table."""
    latencies = [o.latency for o in outcomes]
    failures = [o for o in outcomes if o.status != 200]
    statuses = Counter(o.status for o in outcomes)
    recoveries = [k["kill_to_ready_s"] for k in kills if k["kill_to_ready_s"] is not None]
    return {
        "requests": len(outcomes),
        "ok": statuses.get(200, 0),
        "failures": len(failures),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failed_requests": [
            {"at_s": round(o.at, 2), "status": o.status, "error": o.error} for o in failures
        ],
        "throughput": len(outcomes) / seconds if seconds else 0.0,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies, default=float("nan")),
        "served_by": dict(sorted(Counter(o.served_by or "?" for o in outcomes).items())),
        # Every request (start s, latency s, status, node), for a closer look afterwards.
        "samples": [[round(o.at, 2), round(o.latency, 3), o.status, o.served_by] for o in outcomes],
        "kills": list(kills),
        "recovery_max_s": max(recoveries, default=float("nan")),
        "recovery_median_s": percentile(recoveries, 50),
    }


def chaos(
    out_dir: Path,
    bodies: Sequence[bytes],
    seconds: float,
    interval: float,
    say: Callable[[str], None],
    seed: int = 1,
) -> dict[str, Any]:
    """Start the fleet, load it for ``seconds``, kill a node every ``interval`` s."""
    from bgsvc.cluster import Cluster, ClusterConfig, NodeSpec

    config = ClusterConfig(
        nodes=[NodeSpec(free_port()) for _ in range(NODES)],
        listen_port=free_port(),
        run_dir=out_dir / "chaos",
        workers=1,
        threads=1,
        env={
            # Every request runs the model: no answer from the result cache.
            "BGSVC_RESULT_CACHE_BYTES": "0",
            "BGSVC_LOG_LEVEL": "warning",
            "BGSVC_UI_ENABLED": "false",
        },
    )
    cluster = Cluster(config)
    events: list[str] = []

    def note(line: str) -> None:
        events.append(f"{time.strftime('%H:%M:%S')} {line}")
        say(f"chaos: {line}")

    rng = random.Random(seed)
    kills: list[dict[str, Any]] = []
    outcomes: list[Outcome] = []
    cluster.start()
    try:
        started = time.monotonic()
        cluster.wait_ready(READY_TIMEOUT_S)
        say(f"chaos: {NODES} nodes ready in {time.monotonic() - started:.0f} s")
        host, port = config.host, config.listen_port
        # Each node answers a couple of times before the clock starts (first-run costs).
        closed_loop([Target(host, port)], list(bodies), NODES, 2 * NODES)
        supervisor = cluster.supervise(note)
        box: list[list[Outcome]] = []
        load = threading.Thread(
            target=lambda: box.append(steady_load(host, port, bodies, CLIENTS, seconds))
        )
        began = time.monotonic()
        load.start()
        due = interval
        while due < seconds:
            time.sleep(max(0.0, began + due - time.monotonic()))
            # A node still coming back from the last kill is left alone, so the fleet
            # loses one node at a time (as independent machine failures mostly do).
            waiting = {r.node for r in supervisor.restarts if r.ready_at is None}
            candidates = [n for n in cluster.nodes if n.name not in waiting and n.alive()]
            due += interval
            if not candidates:
                note("no node to kill: every node is still restarting")
                continue
            victim = rng.choice(candidates)
            killed_at = time.monotonic()
            victim.kill()
            kills.append({"at_s": round(killed_at - began, 1), "node": victim.name})
            note(f"kill -9 {victim.name} at {killed_at - began:.1f} s")
            kills[-1]["_mono"] = killed_at
        load.join()
        outcomes = box[0] if box else []
        # The last node killed may still be loading its model; its time counts too.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while any(r.ready_at is None for r in supervisor.restarts):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        restarts = list(supervisor.restarts)
    finally:
        cluster.stop(timeout=60)
    for kill in kills:
        killed_at = kill.pop("_mono")
        match = next(
            (r for r in restarts if r.node == kill["node"] and r.died_at >= killed_at), None
        )
        if match is not None:
            restarts.remove(match)
        ready = match.ready_at if match is not None else None
        kill["kill_to_ready_s"] = None if ready is None else round(ready - killed_at, 1)
    result = summarise_chaos(outcomes, kills, seconds)
    result.update(
        {
            "seconds": seconds,
            "interval_s": interval,
            "nodes": NODES,
            "clients": CLIENTS,
            "client_timeout_s": CLIENT_TIMEOUT_S,
            "events": events,
        }
    )
    result["table"] = {
        "headers": ["kill", "at s", "node", "kill -> /ready 200 s"],
        "rows": [[i + 1, k["at_s"], k["node"], k["kill_to_ready_s"]] for i, k in enumerate(kills)],
    }
    result["note"] = (
        f"{NODES} nodes x 1 worker x 1 ORT thread behind nginx (real default model, result "
        f"cache off, supervised), {CLIENTS} closed-loop clients posting 2 MP JPEGs for "
        f"{seconds:.0f} s, kill -9 of a random node every {interval:.0f} s: "
        f"{result['requests']} requests, {result['failures']} failed, "
        f"{result['throughput']:.2f} req/s, p50 {result['p50_s']:.2f} s, "
        f"p95 {result['p95_s']:.2f} s, max {result['max_s']:.2f} s; "
        f"{len(kills)} kills, back (kill -> /ready 200) in median "
        f"{result['recovery_median_s']:.1f} s, max {result['recovery_max_s']:.1f} s. "
        f"Served by: {result['served_by']}."
    )
    say(result["note"])
    if result["failures"]:
        say(f"!!! CHAOS: {result['failures']} OF {result['requests']} REQUESTS FAILED !!!")
        for failure in result["failed_requests"]:
            say(f"!!!   t={failure['at_s']} s status {failure['status']}: {failure['error']}")
    return result
