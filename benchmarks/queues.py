"""Job-queue libraries on Redis, measured for bgsvc's workload (docs/jobs-queue.md).

``python -m benchmarks.queues`` runs, for each library in benchmarks/queue_libs, against its
own throwaway loopback redis-server (tests/redis_server.py):

1. overhead: 2,000 no-op jobs queued first, then drained by one worker process running 1
   and then 4 jobs at a time; the rate is taken between the first and last job start;
2. enqueue-to-start latency on an idle worker, 200 jobs one at a time;
3. a worker process group killed with SIGKILL 1 s into a 5 s job, a fresh worker started at
   once and a tick job queued every 2 s (traffic goes on): is the job run again, after how
   long, how many times; with the library's defaults and with the best settings found;
4. cancel of a queued job (no worker running) and the queue depth / oldest-age reading.

Every job marks its start (and end) in one Redis list with the wall clock, so all libraries
are timed the same way. Each library runs in its own child process (``run LIB``) because the
modules configure themselves from the environment at import. Results: JSON + Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.queue_libs import LIBRARIES, MARKS
from benchmarks.stats import percentile

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mark:
    event: str
    tag: str
    at: float


def parse_marks(lines: Iterable[bytes | str]) -> list[Mark]:
    marks = []
    for raw in lines:
        text = raw.decode() if isinstance(raw, bytes) else raw
        event, tag, at = text.split(" ")
        marks.append(Mark(event, tag, float(at)))
    return marks


def drain_rate(starts: Sequence[float]) -> tuple[float, float]:
    """Jobs per second and ms per job between the first and the last start: worker start-up
    and the last job's own run are outside the window, so this is the per-job overhead."""
    if len(starts) < 2:
        return math.nan, math.nan
    span = max(starts) - min(starts)
    if span <= 0:
        return math.inf, 0.0
    rate = (len(starts) - 1) / span
    return rate, 1000.0 / rate


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in seconds]
    return {
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "max_ms": max(ms) if ms else math.nan,
    }


@dataclass
class KillOutcome:
    """What became of a job whose worker was killed with SIGKILL while it ran."""

    starts: int
    ends: int
    redelivered_after_s: float | None

    @property
    def verdict(self) -> str:
        if self.starts <= 1:
            return "lost (not run again)"
        if self.ends == 1 and self.starts == 2:
            return "run again once, finished once"
        if self.ends == 0:
            return f"started {self.starts}x, never finished"
        return f"started {self.starts}x, finished {self.ends}x"


def summarise_kill(marks: Sequence[Mark], tag: str, killed_at: float) -> KillOutcome:
    starts = sorted(m.at for m in marks if m.tag == tag and m.event == "start")
    ends = [m for m in marks if m.tag == tag and m.event == "end"]
    after = [t for t in starts if t > killed_at]
    delay = after[0] - killed_at if after else None
    return KillOutcome(starts=len(starts), ends=len(ends), redelivered_after_s=delay)


def cancel_verdict(answered: object, ran: Sequence[str]) -> str:
    """Jobs c0, c1, c2 were queued and c1 canceled before any worker ran."""
    if answered is False:
        return "no API"
    if "c1" in ran:
        return "no: ran anyway"
    if not {"c0", "c2"} <= set(ran):
        return "inconclusive (the others did not run)"
    return "yes"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The tables of docs/jobs-queue.md from the per-library result dicts."""
    lines = [
        "| library | enqueue jobs/s | drain c=1 jobs/s (ms/job) | drain c=4 jobs/s (ms/job)"
        " | start latency p50 / p95 ms | tuned p50 / p95 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['version']} | failed: {r['error']} | | | | |")
            continue
        c1, c4 = r["drain"]["1"], r["drain"]["4"]
        lat, tuned = r["latency"], r.get("latency_tuned") or {}
        lines.append(
            f"| {r['version']} | {_fmt(r['enqueue_per_s'], 0)}"
            f" | {_fmt(c1['jobs_per_s'], 0)} ({_fmt(c1['ms_per_job'], 2)})"
            f" | {_fmt(c4['jobs_per_s'], 0)} ({_fmt(c4['ms_per_job'], 2)})"
            f" | {_fmt(lat['p50_ms'])} / {_fmt(lat['p95_ms'])}"
            f" | {_fmt(tuned.get('p50_ms'))} / {_fmt(tuned.get('p95_ms'))} |"
        )
    lines += [
        "",
        "| library | kill -9, defaults | redelivered after s | kill -9, tuned | redelivered"
        " after s | cancel queued job | depth / oldest age |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "error" in r:
            continue
        kd, kt = r.get("kill_default") or {}, r.get("kill_tuned") or {}
        lines.append(
            f"| {r['library']} | {kd.get('verdict', 'n/a')}"
            f" | {_fmt(kd.get('redelivered_after_s'))}"
            f" | {kt.get('verdict', 'n/a')} | {_fmt(kt.get('redelivered_after_s'))}"
            f" | {r['cancel']['verdict']} | {r['observability']} |"
        )
    return "\n".join(lines) + "\n"


# --- the I/O part: one library in this process -------------------------------------------


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


class _Bench:
    def __init__(self, library: str, url: str, workdir: Path) -> None:
        import redis

        from benchmarks.queue_libs import load

        self.lib = load(library)
        self.client = redis.Redis.from_url(url)
        self.workdir = workdir
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}

    def start_worker(self, concurrency: int) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"worker-{time.monotonic_ns()}.log").open("wb")
        return subprocess.Popen(
            self.lib.worker_command(concurrency),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the whole group is killed, children included
        )

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and every descendant, as a container's death would: rq's work
        horse moves to its own process group, so killing the group alone would spare it."""
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def marks(self) -> list[Mark]:
        return parse_marks(self.client.lrange(MARKS, 0, -1))

    def wait_marks(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.client.llen(MARKS) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.client.llen(MARKS)} of {count} jobs ran")
            time.sleep(0.01)

    def reset(self) -> None:
        self.client.flushdb()

    def drain(self, n: int, concurrency: int) -> dict[str, float]:
        self.reset()
        begin = time.perf_counter()
        for i in range(n):
            self.lib.enqueue(f"d{i}", 0)
        enqueue_s = time.perf_counter() - begin
        worker = self.start_worker(concurrency)
        try:
            self.wait_marks(n, timeout=300)
        finally:
            self.kill(worker)
        rate, per_job = drain_rate([m.at for m in self.marks()])
        return {"jobs_per_s": rate, "ms_per_job": per_job, "enqueue_per_s": n / enqueue_s}

    def latency(self, n: int) -> dict[str, float]:
        self.reset()
        worker = self.start_worker(1)
        try:
            self.lib.enqueue("warm", 0)
            self.wait_marks(1, timeout=60)
            self.client.delete(MARKS)
            delays = []
            for i in range(n):
                tag = f"l{i}"
                sent = time.time()
                self.lib.enqueue(tag, 0)
                popped = self.client.blpop([MARKS], timeout=30)
                if popped is None:
                    raise TimeoutError(f"job {tag} did not start within 30 s")
                (mark,) = parse_marks([popped[1]])
                delays.append(mark.at - sent)
                time.sleep(0.02)  # the worker goes back to idle waiting
        finally:
            self.kill(worker)
        return latency_summary(delays)

    def kill_test(self, wait_s: float) -> dict[str, Any]:
        self.reset()
        first = self.start_worker(1)
        try:
            self.lib.enqueue("victim", 5.0)
            deadline = time.monotonic() + 60
            while not any(m.tag == "victim" for m in self.marks()):
                if time.monotonic() > deadline:
                    raise TimeoutError("the 5 s job never started")
                time.sleep(0.02)
            time.sleep(1.0)
        finally:
            killed_at = time.time()
            self.kill(first)
        second = self.start_worker(1)
        try:
            deadline = time.monotonic() + wait_s
            ticks, next_tick = 0, 0.0
            while time.monotonic() < deadline:
                outcome = summarise_kill(self.marks(), "victim", killed_at)
                if outcome.ends:
                    # It finished: watch a little longer for a further duplicate run.
                    deadline = min(deadline, time.monotonic() + 8.0)
                if time.monotonic() >= next_tick:
                    self.lib.enqueue(f"tick{ticks}", 0)
                    ticks, next_tick = ticks + 1, time.monotonic() + 2.0
                time.sleep(0.05)
        finally:
            self.kill(second)
        outcome = summarise_kill(self.marks(), "victim", killed_at)
        return {**asdict(outcome), "verdict": outcome.verdict, "watched_s": wait_s}

    def cancel_test(self) -> dict[str, Any]:
        self.reset()
        handles = [self.lib.enqueue(f"c{i}", 0) for i in range(3)]
        time.sleep(0.5)
        depth_before, age = self.lib.depth(), self.lib.oldest_age()
        try:
            answered = self.lib.cancel(handles[1])
        except Exception as exc:  # report what the library did, whatever it was
            answered = f"raised {type(exc).__name__}: {exc}"
        depth_after = self.lib.depth()
        worker = self.start_worker(1)
        try:
            with contextlib.suppress(TimeoutError):
                self.wait_marks(2, timeout=20)
            time.sleep(1.0)  # room for the canceled job to run if it is going to
        finally:
            self.kill(worker)
        ran = sorted({m.tag for m in self.marks()})
        return {
            "answered": answered,
            "depth_before": depth_before,
            "depth_after": depth_after,
            "oldest_age_s": age,
            "ran": ran,
            "verdict": cancel_verdict(answered, ran),
        }


def run_one(library: str, tuned: bool, phases: Sequence[str], kill_wait_s: float) -> dict:
    from tests.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix=f"qb-{library}-") as tmp:
        workdir = Path(tmp)
        (workdir / "redis").mkdir()
        server = RedisServer(workdir / "redis")
        server.start()
        os.environ["QB_REDIS_URL"] = server.url
        os.environ["QB_TUNED"] = "1" if tuned else "0"
        try:
            bench = _Bench(library, server.url, workdir)
            out: dict[str, Any] = {"library": library, "version": bench.lib.VERSION}
            out["settings"] = bench.lib.TUNING if tuned else bench.lib.DEFAULTS
            if "drain" in phases:
                out["drain"] = {str(c): bench.drain(2000, c) for c in (1, 4)}
                out["enqueue_per_s"] = out["drain"]["1"]["enqueue_per_s"]
            if "latency" in phases:
                out["latency"] = bench.latency(200)
            if "cancel" in phases:
                out["cancel"] = bench.cancel_test()
            if "kill" in phases:
                out["kill"] = bench.kill_test(kill_wait_s)
            return out
        finally:
            server.stop()


def _child(library: str, tuned: bool, phases: str, kill_wait_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.queues", "run", library, "--phases", phases]
    command += ["--kill-wait", str(kill_wait_s)] + (["--tuned"] if tuned else [])
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"library": library, "error": done.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def merge(
    measured: dict[str, Any],
    tuned_latency: dict[str, Any],
    kill_default: dict[str, Any],
    kill_tuned: dict[str, Any],
) -> dict[str, Any]:
    """One library's report row from its four child runs; a failed run shows as its error."""
    for part in (measured, tuned_latency, kill_default, kill_tuned):
        if "error" in part:
            return {
                "library": measured["library"],
                "version": measured.get("version", measured["library"]),
                "error": part["error"],
            }
    cancel = measured["cancel"]
    age = cancel["oldest_age_s"]
    observability = f"depth {cancel['depth_before']} -> {cancel['depth_after']}; " + (
        f"oldest age {age:.1f} s" if age is not None else "oldest age not readable"
    )
    return {
        **measured,
        "latency_tuned": tuned_latency["latency"],
        "kill_default": {**kill_default["kill"], "settings": kill_default["settings"]},
        "kill_tuned": {**kill_tuned["kill"], "settings": kill_tuned["settings"]},
        "observability": observability,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="all", choices=["all", "run"])
    parser.add_argument("library", nargs="?")
    parser.add_argument("--libs", default=",".join(LIBRARIES))
    parser.add_argument("--phases", default="drain,latency,cancel,kill")
    parser.add_argument("--tuned", action="store_true")
    parser.add_argument("--kill-wait", type=float, default=200.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args(argv)
    if args.command == "run":
        result = run_one(args.library, args.tuned, args.phases.split(","), args.kill_wait)
        print(json.dumps(result))
        return 0
    libs = [name for name in args.libs.split(",") if name]
    measured = {lib: _child(lib, False, "drain,latency,cancel", 0) for lib in libs}
    tuned_latency = {lib: _child(lib, True, "latency", 0) for lib in libs}
    # The kill runs mostly wait on timers, so they run side by side, each on its own Redis.
    with ThreadPoolExecutor(max_workers=2 * len(libs)) as pool:
        kills = {
            (lib, tuned): pool.submit(_child, lib, tuned, "kill", args.kill_wait)
            for lib in libs
            for tuned in (False, True)
        }
        killed = {key: future.result() for key, future in kills.items()}
    results = [
        merge(measured[lib], tuned_latency[lib], killed[(lib, False)], killed[(lib, True)])
        for lib in libs
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "queues.json").write_text(json.dumps(results, indent=2))
    markdown = render_markdown(results)
    (args.out / "queues.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
