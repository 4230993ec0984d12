"""High-rate closed-loop load for the fleet tests and the chaos bench: several processes
(so the client is not held to one core by the GIL), each with a few threads on keep-alive
connections, posting the same body as fast as answers come back for a fixed time or count.

Every request is counted: by status (0 for a connection-level failure), with its latency
and the second it ended in, so a test can assert "0 failed" and show when failures
clustered. Loopback targets only; bounded by ``seconds`` and ``max_requests``.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Per-request socket timeout: far above any answer of a healthy fleet (nginx gives up on a
# node after 35 s), so a hang shows up as a failure instead of stalling the run.
REQUEST_TIMEOUT_S = 60.0


@dataclass
class LoadResult:
    """What a run saw, merged over every client process."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    # Failed requests (status != 200) per second since the start of the run.
    failures_by_second: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.total - self.statuses.get(200, 0)

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers for the test output and the recorded measurements."""
        return {
            "requests": self.total,
            "failed": self.failed,
            "seconds": round(self.seconds, 1),
            "requests_per_s": round(self.rate, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "p50_ms": round(self.percentile(50) * 1000, 1),
            "p95_ms": round(self.percentile(95) * 1000, 1),
            "p99_ms": round(self.percentile(99) * 1000, 1),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 1),
            "served_by": dict(sorted(self.served_by.items())),
            "failures_by_second": {str(k): v for k, v in sorted(self.failures_by_second.items())},
            "first_errors": self.errors[:5],
        }


def _client_process(
    host: str,
    port: int,
    path: str,
    body: bytes,
    content_type: str,
    threads: int,
    start_at: float,
    seconds: float,
    max_requests: int,
    out: Any,
    stop: Any,
) -> None:
    result = LoadResult()
    lock = threading.Lock()
    sent = [0]
    deadline = start_at + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        headers = {"Content-Type": content_type}
        while time.time() < deadline and not stop.is_set():
            with lock:
                if sent[0] >= max_requests:
                    break
                sent[0] += 1
            began = time.perf_counter()
            served = ""
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                served = response.getheader("X-Served-By") or ""
                error = "" if status == 200 else f"HTTP {status} {response.reason}"
            except (OSError, http.client.HTTPException) as exc:
                conn.close()  # the next request reconnects
                status, error = 0, f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - began
            with lock:
                result.statuses[status] += 1
                result.latencies.append(elapsed)
                if served:
                    result.served_by[served] += 1
                if status != 200:
                    second = int(time.time() - start_at)
                    result.failures_by_second[second] += 1
                    if len(result.errors) < 20:
                        result.errors.append(f"t={second}s {error}")
        conn.close()

    time.sleep(max(0.0, start_at - time.time()))
    pool = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + REQUEST_TIMEOUT_S + 5)
    result.seconds = time.time() - start_at
    out.put(result)


class Hammer:
    """Start the load in the background (``start``), do things to the fleet meanwhile, then
    ``join`` for the merged result."""

    def __init__(
        self,
        url_host: str,
        port: int,
        path: str,
        body: bytes,
        *,
        seconds: float,
        max_requests: int = 10**9,
        processes: int = 2,
        threads: int = 4,
        content_type: str = "image/png",
    ) -> None:
        self.seconds = seconds
        self._ctx = mp.get_context("spawn")
        self._out: Any = self._ctx.Queue()
        self._stop: Any = self._ctx.Event()
        self._args = (url_host, port, path, body, content_type, threads)
        self._max_per_process = max(1, max_requests // processes)
        self._procs = processes
        self._workers: list[Any] = []
        self.started_at = 0.0

    def start(self, delay: float = 1.0) -> float:
        """Spawn the clients; they begin together ``delay`` s from now (spawned processes
        take a moment to import). Returns that wall-clock start time."""
        self.started_at = time.time() + delay
        for _ in range(self._procs):
            args = (
                *self._args,
                self.started_at,
                self.seconds,
                self._max_per_process,
                self._out,
                self._stop,
            )
            worker = self._ctx.Process(target=_client_process, args=args, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self.started_at

    def elapsed(self) -> float:
        return time.time() - self.started_at

    def stop(self) -> None:
        """End the load now, before its ``seconds`` are up (each client finishes the
        request it is waiting for)."""
        self._stop.set()

    def join(self) -> LoadResult:
        merged = LoadResult()
        parts = [
            self._out.get(timeout=self.seconds + REQUEST_TIMEOUT_S + 60) for _ in self._workers
        ]
        for worker in self._workers:
            worker.join(10)
        for part in parts:
            merged.statuses.update(part.statuses)
            merged.latencies.extend(part.latencies)
            merged.failures_by_second.update(part.failures_by_second)
            merged.errors.extend(part.errors)
            merged.served_by.update(part.served_by)
            merged.seconds = max(merged.seconds, part.seconds)
        return merged
