"""Every Prometheus metric of the service, correct under several worker processes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# End-to-end latency on a CPU spans 50 ms (health, rejections) to ~20 s (queued 4K images).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
MEGAPIXEL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 50.0)

# The families labelled by API key name: they say who the tenants are and how much each
# one sends, so /metrics leaves them out unless the scraper proved itself (health route).
KEY_REQUESTS = "bgsvc_key_requests"
KEY_REJECTIONS = "bgsvc_key_rejections"
TENANT_FAMILIES = frozenset({KEY_REQUESTS, KEY_REJECTIONS})


class Metrics:
    """The service's metrics on their own registry, so each app (and test) has its own.

    In multiprocess mode (gunicorn; PROMETHEUS_MULTIPROC_DIR set before start-up) values
    go to per-process files and :meth:`render` aggregates every live and dead worker.
    """

    def __init__(self, multiproc_dir: Path | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bgsvc_http_requests", "HTTP requests.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "bgsvc_http_request_duration_seconds",
            "HTTP request latency.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "bgsvc_inference_duration_seconds",
            "Model forward pass (incl. pre/post-processing for unstaged predictors).",
            ["model"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.decode = Histogram(
            "bgsvc_decode_duration_seconds", "Decode and guard.", buckets=STAGE_BUCKETS, registry=r
        )
        self.postprocess = Histogram(
            "bgsvc_postprocess_duration_seconds",
            "Refinement and compositing.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.encode = Histogram(
            "bgsvc_encode_duration_seconds", "Output encoding.", buckets=STAGE_BUCKETS, registry=r
        )
        self.inflight = Gauge(
            "bgsvc_inflight_inferences",
            "Inferences running now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "bgsvc_queued_requests",
            "Admitted requests not yet in inference.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejections = Counter(
            "bgsvc_rejections", "Requests refused, by reason.", ["reason"], registry=r
        )
        self.model_load = Gauge(
            "bgsvc_model_load_seconds",
            "Time to load and warm a model.",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )
        self.engine_info = Gauge(
            "bgsvc_engine_info",
            "1 per model and the engine, precision and device it runs on.",
            ["model", "engine", "precision", "device"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.input_megapixels = Histogram(
            "bgsvc_input_megapixels",
            "Source image size in megapixels.",
            buckets=MEGAPIXEL_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "bgsvc_ready",
            "1 per worker process that is ready to serve.",
            registry=r,
            multiprocess_mode="livesum",
        )

        self.cache_lookups = Counter(
            "bgsvc_result_cache_lookups",
            "Result-cache lookups, by result (hit or miss).",
            ["result"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "bgsvc_result_cache_evictions", "Results evicted to stay within budget.", registry=r
        )
        self.cache_bytes = Gauge(
            "bgsvc_result_cache_bytes",
            "Bytes held by the per-process result cache.",
            registry=r,
            multiprocess_mode="livesum",
        )

        # Stuck-inference watchdog (bgsvc.inference.watchdog); alert rules use this name.
        self.watchdog_trips = Counter(
            "bgsvc_watchdog_trips",
            "Processes replaced because an inference ran past BGSVC_WATCHDOG_S.",
            registry=r,
        )

        # The edge step's graphs failed a call and the CPU kernels ran it (device memory).
        self.edge_graph_fallbacks = Counter(
            "bgsvc_edge_graph_fallbacks",
            "Edge-step calls the ONNX graphs failed and the CPU kernels ran instead.",
            registry=r,
        )

        # Alerting: restarts. "max" is the newest worker's start: files of dead workers
        # stay (and a node start wipes the folder), so each start moves it exactly once.
        self.process_start = Gauge(
            "bgsvc_process_start_time_seconds",
            "Start time (Unix seconds) of the newest worker process of this node.",
            registry=r,
            multiprocess_mode="max",
        )
        self._collectors: list[Collector] = []

        # Shared result cache (bgsvc.cache.tiered): lookups per level, coalesced requests.
        self.cache_level_lookups = Counter(
            "bgsvc_result_cache_level_lookups",
            "Result-cache lookups per level (local or redis), by result (hit or miss).",
            ["level", "result"],
            registry=r,
        )
        self.cache_errors = Counter(
            "bgsvc_cache_errors",
            "Cache level calls that failed (the level was bypassed), by level.",
            ["level"],
            registry=r,
        )
        self.cache_coalesced = Counter(
            "bgsvc_result_cache_coalesced",
            "Requests answered by another request's computation: in this process or, "
            "through the Redis lock, on another node.",
            ["scope"],
            registry=r,
        )

        # Asynchronous jobs (bgsvc.jobs): outcomes, backlog and how long jobs take.
        self.jobs = Counter(
            "bgsvc_jobs",
            "Jobs ended or retried, by outcome (succeeded, failed, canceled, expired, retried; "
            "split: a video cut into segment jobs).",
            ["outcome"],
            registry=r,
        )
        self.job_queue_depth = Gauge(
            "bgsvc_job_queue_depth",
            "Jobs queued and not yet started (the node's shared job store).",
            registry=r,
            multiprocess_mode="max",
        )
        self.job_oldest_age = Gauge(
            "bgsvc_job_oldest_queued_age_seconds",
            "Age of the oldest queued job; 0 when none waits.",
            registry=r,
            multiprocess_mode="max",
        )
        self.job_duration = Histogram(
            "bgsvc_job_duration_seconds",
            "Last attempt of a job, claim to end, by outcome.",
            ["outcome"],
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0, 120.0),
            registry=r,
        )

        # Webhook deliveries (bgsvc.jobs.notify): how each ended, and every POST on the way.
        self.webhook_deliveries = Counter(
            "bgsvc_webhook_deliveries",
            "Webhook deliveries ended, by event and outcome (delivered, gone, refused, exhausted).",
            ["event", "outcome"],
            registry=r,
        )
        self.webhook_attempts = Counter(
            "bgsvc_webhook_attempts",
            "Webhook POSTs, by event and result (status class 2xx..5xx, or the error code).",
            ["event", "result"],
            registry=r,
        )

        # URL inputs (bgsvc.urlinputs): fetches by outcome (fetched, or the error code).
        self.url_fetches = Counter(
            "bgsvc_url_fetches",
            "Image URL fetches, by outcome: fetched, or the error code (url_forbidden, "
            "url_invalid, url_fetch_failed, url_too_large, unsupported_format...).",
            ["outcome"],
            registry=r,
        )
        self.url_fetch_seconds = Histogram(
            "bgsvc_url_fetch_seconds",
            "Image URL fetches, start to the last byte checked, by outcome.",
            ["outcome"],
            buckets=(*LATENCY_BUCKETS, 30.0),
            registry=r,
        )

        # Rate limits and quotas (bgsvc.limits): decisions taken without the store.
        self.limits_errors = Counter(
            "bgsvc_limits_errors",
            "Limit checks the store (Redis or SQLite) could not answer, by what was done "
            "(admitted: fail-open; refused: fail-closed).",
            ["action"],
            registry=r,
        )

        # API keys (bgsvc.auth): key labels are bounded by BGSVC_METRICS_MAX_KEYS ("other").
        self.key_requests = Counter(
            KEY_REQUESTS,
            "Authenticated API requests, by key name and HTTP status.",
            ["key", "status"],
            registry=r,
        )
        self.key_rejections = Counter(
            KEY_REJECTIONS,
            "Requests of a known key refused, by key name and reason (revoked, scope, "
            "rate_limited, quota_exceeded).",
            ["key", "reason"],
            registry=r,
        )
        self.auth_failures = Counter(
            "bgsvc_auth_failures",
            "Failed authentications, by reason (missing, unknown, throttled).",
            ["reason"],
            registry=r,
        )

    def add_collector(self, collector: Collector) -> None:
        """A collector read at every scrape (e.g. GPU metrics), in both modes."""
        self._collectors.append(collector)
        if self.multiproc_dir is None:
            self.registry.register(collector)

    def set_queue(self, queued: int, running: int) -> None:
        """Scheduler observer hook."""
        self.queued.set(queued)
        self.inflight.set(running)

    def render(self, tenants: bool = True) -> tuple[bytes, str]:
        """The exposition text and its content type; ``tenants=False`` leaves out the
        families labelled by key name (TENANT_FAMILIES)."""
        registry = self.registry
        if self.multiproc_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self.multiproc_dir))  # type: ignore[no-untyped-call]
            for collector in self._collectors:
                registry.register(collector)
        if not tenants:
            registry = _without(registry, TENANT_FAMILIES)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Filtered(Collector):
    def __init__(self, source: CollectorRegistry, names: frozenset[str]) -> None:
        self.source = source
        self.names = names

    def collect(self) -> Iterable[Metric]:
        return (family for family in self.source.collect() if family.name not in self.names)


def _without(source: CollectorRegistry, names: frozenset[str]) -> CollectorRegistry:
    """A registry that reads ``source`` at every scrape, less the families ``names``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Filtered(source, names))
    return registry
