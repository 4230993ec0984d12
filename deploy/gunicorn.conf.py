"""gunicorn settings for bgsvc: ``gunicorn -c deploy/gunicorn.conf.py 'bgsvc.app:create_app()'``
(deploy/start.sh does exactly that). Every value comes from bgsvc's settings, so the
same BGSVC_* environment drives `bgsvc serve`, this file, Compose and Kubernetes.

Sizing on CPU: workers x ORT intra-op threads = cores. Each worker is a process with its
own model session (~1.4 GiB resident for the default model once warm; budget 4 GiB per
worker with its decodes, docs/operations.md, "Limits and memory") and runs one inference at a time by
default; ONNX Runtime spreads that inference over its intra-op threads. More threads than
cores only adds contention. With BGSVC_INTRA_OP_THREADS=0 (the default) each worker takes
cores // workers threads, so set only the worker count (BGSVC_WORKERS or gunicorn's usual
WEB_CONCURRENCY): 1 worker x 8 threads has the lowest latency per image, 4 x 2 or 8 x 1
the highest throughput and better isolation. In a container, the CPU limit is not what
the process sees as cores: set BGSVC_INTRA_OP_THREADS explicitly there.

Sizing on a CUDA host (docs/gpu.md): with BGSVC_WORKERS unset, 2 workers per GPU, each
running 4 inferences at once (BGSVC_MAX_CONCURRENCY=0). Each worker holds a slot (the
lowest one free when it is forked, so a replacement takes over the slot of the worker it
replaces) and runs on GPU slot mod n of BGSVC_GPU_DEVICES (default: every visible GPU).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from prometheus_client import multiprocess

from bgsvc import gpu_layout
from bgsvc.config import get_settings
from bgsvc.log import gunicorn_logger_class
from bgsvc.server import KEEPALIVE_SECONDS

_settings = get_settings()

_host = f"[{_settings.host}]" if ":" in _settings.host else _settings.host
bind = [f"{_host}:{_settings.port}"]
# NVML and package metadata only: onnxruntime must never be loaded in the arbiter.
_gpu = gpu_layout.probe(_settings)
workers = gpu_layout.worker_count(_settings, _gpu)
worker_class = "bgsvc.server.DrainingUvicornWorker"
# The model is loaded in each worker (never in the arbiter): ONNX Runtime sessions and
# their thread pools do not survive fork.
preload_app = False

# Heartbeat: a worker whose event loop is stuck this long is killed and replaced.
# Inference runs in threads, so a healthy worker's loop stays responsive under load.
timeout = 60
# After SIGTERM: drain window + the longest request's budget + margin; then SIGKILL.
graceful_timeout = int(_settings.graceful_timeout_s)
# Longer than nginx's upstream keepalive_timeout (60 s): nginx closes idle connections.
keepalive = KEEPALIVE_SECONDS
# No recycling. gunicorn's max_requests ends a worker without the drain (/ready never
# turns 503, keep-alive and in-flight connections are reset) and, with one worker per node
# and least_conn spreading load evenly, every node reached the count at the same moment:
# 10,387 of 22,367 requests failed at ~550 requests/s. Worker memory was measured flat
# (benchmarks/RESULTS.md), so there is nothing to recycle for.
max_requests = 0

# The client of a request is the socket peer unless that peer is a proxy named in
# BGSVC_TRUSTED_PROXIES (empty: none); then it is the right-most X-Forwarded-For entry that
# is not one. The same setting drives the failed-authentication budget, so the two never
# disagree; gunicorn's own default (FORWARDED_ALLOW_IPS, else 127.0.0.1,::1) would believe
# any process on the machine.
forwarded_allow_ips = ",".join(_settings.forwarded_allow_ips)

# The per-request record comes from the app (BGSVC_ACCESS_LOG), with the request id and
# the route; gunicorn's own access log would only repeat it without them.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
# gunicorn's lines (and uvicorn's, in the workers) in BGSVC_LOG_FORMAT, like the app's.
logger_class = gunicorn_logger_class()
# gunicorn >= 25 opens a control socket under $HOME by default: several nodes on one
# machine would fight over it, and the container's home is not writable.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """In the arbiter, before any port is bound: fail with one clear line when the model
    file is missing or corrupt or the provider is unusable, instead of a crash loop of
    workers."""
    from bgsvc.inference.preflight import check_in_child
    from bgsvc.log import configure_logging

    configure_logging(_settings.log_level, _settings.log_format)
    # In a child interpreter: this process forks the workers, and onnxruntime loaded here
    # would make every one of them abort when it exits (see bgsvc.inference.preflight).
    error = check_in_child()
    if error is not None:
        if _settings.log_format == "json":
            server.log.critical("bgsvc: error: %s", error)
        else:
            print(f"bgsvc: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    if _gpu is not None:
        server.log.info(
            "CUDA host: %d worker(s) over GPU(s) %s", workers, ",".join(map(str, _gpu.devices))
        )
    if _settings.prometheus_multiproc_dir is None and workers > 1:
        server.log.warning(
            "PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows one random worker only"
        )


def child_exit(server: Any, worker: Any) -> None:
    """A worker died or was recycled: its live gauges stop counting (livesum), its
    counters and histograms keep contributing to the totals."""
    if _settings.prometheus_multiproc_dir is not None:
        multiprocess.mark_process_dead(worker.pid, str(_settings.prometheus_multiproc_dir))


def pre_fork(server: Any, worker: Any) -> None:
    """In the arbiter: the new worker takes the lowest slot no live worker holds (dead ones
    are reaped before their replacement is forked), so its GPU is the one it replaces."""
    worker.bgsvc_slot = gpu_layout.lowest_free_slot(
        getattr(w, "bgsvc_slot", -1) for w in server.WORKERS.values()
    )


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker, before the app is built: its GPU and memory share become its own
    settings (the environment is what the worker's Settings read)."""
    if _gpu is None:
        return
    env = gpu_layout.worker_environment(_settings, _gpu, workers, worker.bgsvc_slot)
    os.environ.update(env)
    # The settings were read (and cached) in the arbiter before the fork.
    get_settings.cache_clear()
    server.log.info(
        "worker slot %d on CUDA device %s%s",
        worker.bgsvc_slot,
        env["BGSVC_CUDA_DEVICE_ID"],
        f", arena limit {env['BGSVC_CUDA_MEM_LIMIT_BYTES']} bytes"
        if "BGSVC_CUDA_MEM_LIMIT_BYTES" in env
        else "",
    )
