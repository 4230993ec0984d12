"""Load generation over plain http.client: closed loop at a fixed concurrency, open loop
at a fixed rate. Threads and keep-alive connections keep the client's own CPU small next
to a 1-second forward pass (it shares the machine with the server)."""

from __future__ import annotations

import http.client
import itertools
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.stats import Sample, parse_server_timing


@dataclass(frozen=True)
class Target:
    """A node (or the balancer) on loopback."""

    host: str
    port: int


class _Balancer:
    """Least-outstanding-requests choice among targets (what nginx's least_conn does), for
    the several-processes layouts measured without nginx."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)
        self.busy = [0] * len(self.targets)
        self.lock = threading.Lock()

    def acquire(self) -> int:
        with self.lock:
            index = min(range(len(self.targets)), key=lambda i: self.busy[i])
            self.busy[index] += 1
            return index

    def release(self, index: int) -> None:
        with self.lock:
            self.busy[index] -= 1


def post(
    conn: http.client.HTTPConnection,
    path: str,
    body: bytes,
    timeout: float = 120.0,
    content_type: str = "image/jpeg",
) -> Sample:
    """One POST of ``body`` (an image/jpeg by default); the connection is reused
    (keep-alive)."""
    started = time.perf_counter()
    wall = time.time()
    try:
        conn.timeout = timeout
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        status = response.status
        timing = parse_server_timing(response.getheader("Server-Timing"))
        cache = response.getheader("X-Cache")
    except (OSError, http.client.HTTPException):
        conn.close()  # the next request reconnects
        status, timing, cache = 0, {}, None
    return Sample(wall, time.perf_counter() - started, status, timing, cache)


def closed_loop(
    targets: Sequence[Target],
    bodies: Sequence[bytes],
    concurrency: int,
    total: int,
    path: str = "/remove-background?format=png",
    content_type: str = "image/jpeg",
) -> list[Sample]:
    """``concurrency`` clients each sending the next body as soon as their last answer
    came, until ``total`` requests were sent."""
    counter = itertools.count()
    balancer = _Balancer(targets)
    samples: list[Sample] = []
    lock = threading.Lock()

    def client() -> None:
        conns: dict[int, http.client.HTTPConnection] = {}
        while (n := next(counter)) < total:
            index = balancer.acquire()
            target = balancer.targets[index]
            conn = conns.get(index)
            if conn is None:
                conn = conns[index] = http.client.HTTPConnection(target.host, target.port)
            try:
                sample = post(conn, path, bodies[n % len(bodies)], content_type=content_type)
            finally:
                balancer.release(index)
            with lock:
                samples.append(sample)
        for conn in conns.values():
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def open_loop(
    target: Target,
    body: bytes,
    rate: float,
    seconds: float,
    path: str = "/remove-background?format=png",
    max_outstanding: int = 256,
) -> list[Sample]:
    """Requests started at a fixed ``rate`` per second for ``seconds``, whatever the
    answers: the arrival pattern of many independent users (bounded by max_outstanding)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(max_outstanding)
    threads: list[threading.Thread] = []

    def one() -> None:
        conn = http.client.HTTPConnection(target.host, target.port)
        try:
            sample = post(conn, path, body)
        finally:
            conn.close()
            slots.release()
        with lock:
            samples.append(sample)

    interval = 1.0 / rate
    start = time.perf_counter()
    n = 0
    while (due := start + n * interval) < start + seconds:
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        slots.acquire()
        thread = threading.Thread(target=one, daemon=True)
        thread.start()
        threads.append(thread)
        n += 1
    for thread in threads:
        thread.join()
    return samples


def process_throughput(
    worker: Callable[..., None], args: tuple[Any, ...], procs: int, runs: int
) -> float:
    """Images/s of ``procs`` spawned processes, each calling ``worker(*args, runs, barrier,
    out)``: warm up, wait at the barrier, time ``runs`` forwards and put the seconds on
    ``out``. The slowest process sets the span."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    workers = [ctx.Process(target=worker, args=(*args, runs, barrier, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    spans = [out.get() for _ in workers]
    for w in workers:
        w.join()
    return procs * runs / max(spans)
