"""The application factory: its parts, lifespan, routers, error handlers and middleware."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import FastAPI

from bgsvc import __version__, error_handlers, gpu_layout, tracing
from bgsvc.allocator import tune_malloc
from bgsvc.auth import account
from bgsvc.auth.base import KeyStore
from bgsvc.auth.factory import open_store as open_key_store
from bgsvc.auth.middleware import AuthMiddleware
from bgsvc.batches.service import item_finished
from bgsvc.config import Settings, get_settings
from bgsvc.errors import ModelError
from bgsvc.imaging import edges, refine, temporal
from bgsvc.inference.loader import load_engines
from bgsvc.inference.providers import GPU_PROVIDERS
from bgsvc.inference.scheduler import Scheduler
from bgsvc.inference.watchdog import Watchdog, hard_exit
from bgsvc.jobs.runtime import Jobs
from bgsvc.limits.base import Limits
from bgsvc.limits.factory import build_limits
from bgsvc.log import QUIET_ROUTES
from bgsvc.metrics import Metrics
from bgsvc.middleware import AdmissionMiddleware, RequestContextMiddleware
from bgsvc.outbound.client import Resolver, system_resolver
from bgsvc.pipeline import EdgeStep, Predictor
from bgsvc.routes import batches, compat_rembg, compat_removebg, docs, health, jobs, remove
from bgsvc.state import AppState, on_drain
from bgsvc.urlinputs.fetcher import UrlFetcher
from bgsvc.web.security import add_cors

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

EngineLoader = Callable[[Settings], Mapping[str, Predictor]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _stop_process() -> None:
    # A worker that can never become ready must not linger half-alive behind the balancer.
    os.kill(os.getpid(), signal.SIGTERM)


def _on_gpu(engine: Predictor) -> bool:
    # The provider ORT really uses, not the setting: `auto` may have ended up on the CPU.
    providers = getattr(engine, "providers", None) or [None]
    return providers[0] in GPU_PROVIDERS


def _edge_graphs(
    settings: Settings, on_gpu: bool, on_fallback: Callable[[], None]
) -> EdgeStep | None:
    """The edge step as ONNX graphs on the model's GPU (BGSVC_EDGE_STEP auto or graph), or
    on ORT's CPU provider (graph, without a GPU); None (the CPU kernels stay) when they
    cannot be built, or would not run on the GPU the model runs on."""
    from bgsvc.inference.edge_graph import EdgeGraphs
    from bgsvc.inference.engine import session_options
    from bgsvc.inference.loader import runtime_options
    from bgsvc.inference.providers import CPU, CUDA, memory_limits, provider_options

    runtime = runtime_options(settings)
    gpu = replace(
        runtime.gpu, mem_limit_bytes=memory_limits(settings.cuda_mem_limit_bytes, True)[1]
    )
    providers = [CUDA, CPU] if on_gpu else [CPU]
    try:
        graphs = EdgeGraphs(
            providers, provider_options(providers, gpu), session_options(runtime), on_fallback
        )
    except Exception as exc:  # ORT's own error types; the CPU kernels do the same work
        log.warning("edge step: the ONNX graphs could not be built (%s); on the CPU", exc)
        return None
    if on_gpu and graphs.providers[0] != CUDA:
        # ORT put them on its CPU provider by itself (CUDA could not start for them):
        # there they are slower than the kernels.
        log.warning("edge step: the ONNX graphs did not get the GPU; on the CPU kernels")
        return None
    log.info("edge step: ONNX graphs on %s", graphs.providers[0])
    return graphs


async def _load_models(
    state: AppState, loader: EngineLoader, on_failure: Callable[[], None]
) -> None:
    try:
        await _load(state, loader)
    except ModelError as exc:
        state.load_error = exc.message
        log.error("model load failed: %s", exc.message)
        on_failure()
    except Exception as exc:
        # Anything else (a dependency missing from the install, a broken driver) would
        # otherwise end this task unseen and leave /ready at "loading model" for good.
        # The body names only the type: /ready is reachable by whoever reaches the port.
        state.load_error = f"{type(exc).__name__} (see the log)"
        log.exception("model load failed")
        on_failure()


async def _load(state: AppState, loader: EngineLoader) -> None:
    """Models, kernels and the edge step, then ready."""
    engines = await anyio.to_thread.run_sync(loader, state.settings)
    await anyio.to_thread.run_sync(refine.preload)
    await anyio.to_thread.run_sync(edges.preload)
    await anyio.to_thread.run_sync(temporal.preload)
    on_gpu = any(_on_gpu(engine) for engine in engines.values())
    step = state.settings.edge_step
    if step == "graph" or (step == "auto" and on_gpu):
        fallbacks = state.metrics.edge_graph_fallbacks.inc
        graphs = await anyio.to_thread.run_sync(_edge_graphs, state.settings, on_gpu, fallbacks)
        if graphs is not None:
            state.remover.edge_step = graphs
    state.engines.update(engines)
    for name, engine in engines.items():
        seconds = getattr(engine, "load_seconds", None)
        if seconds is not None:
            state.metrics.model_load.labels(name).set(seconds)

    for name, choice in state.engine_choices().items():
        state.metrics.engine_info.labels(
            name, choice["engine"], choice["precision"], choice["device"]
        ).set(1)
    if on_gpu:
        from bgsvc.gpu_metrics import GpuCollector

        state.metrics.add_collector(GpuCollector())
    if state.settings.warm_stages:
        # A warm-up only saves the first request some time: never a reason not to serve,
        # nor to keep /ready waiting past one request's budget.
        try:
            seconds = await asyncio.wait_for(
                state.service.warm_stages(), state.settings.request_timeout_s
            )
            log.info("stages rehearsed on a made-up photo in %.2fs", seconds)
        except TimeoutError:
            log.warning(
                "rehearsing the stages took over %.0fs; serving without waiting",
                state.settings.request_timeout_s,
            )
        except Exception:
            log.warning("rehearsing the stages failed; serving without", exc_info=True)
    state.ready = True
    state.metrics.ready.set(1)


def create_app(
    settings: Settings | None = None,
    *,
    engine_loader: EngineLoader = load_engines,
    on_load_failure: Callable[[], None] = _stop_process,
    span_exporter: SpanExporter | None = None,
    on_stuck: Callable[[], None] = _stop_process,
    exit_process: Callable[[int], None] = hard_exit,
    outbound_resolver: Resolver = system_resolver,
) -> FastAPI:
    """Build the ASGI app. Nothing heavy happens here: models load in the lifespan, in the
    background, so /health answers and /ready says 503 until they are warm.

    ``span_exporter`` (tests) receives every span, whatever the OTEL_* settings say.
    ``on_stuck`` starts the replacement of a process whose inference hangs (default: the
    drain, via SIGTERM) and ``exit_process`` ends it once drained (default: os._exit);
    tests inject both, and ``outbound_resolver`` (the names URL inputs resolve)."""
    settings = settings or get_settings()
    traces = tracing.setup(settings, span_exporter)
    tracing.install(traces)
    parts = _Parts.build(settings, traces, exit_process, outbound_resolver)
    app = FastAPI(
        title="bgsvc",
        version=__version__,
        description="Background removal as an HTTP service: native, rembg- and "
        "remove.bg-compatible APIs.",
        lifespan=_lifespan(parts, engine_loader, on_load_failure, on_stuck),
        # Served by routes.docs, with its scripts pinned to their hashes.
        docs_url=None,
        redoc_url=None,
        telemetry=tracing.fastapi_telemetry(traces, lambda scope: scope["path"] in QUIET_ROUTES),
    )
    _attach(app, parts)
    _include_routers(app, settings)
    error_handlers.install(app, parts.metrics)
    _add_middleware(app, parts)
    return app


@dataclass(frozen=True)
class _Parts:
    """What one app is made of, built before the app itself (nothing heavy: see create_app)."""

    settings: Settings
    traces: tracing.Tracing | None
    metrics: Metrics
    watchdog: Watchdog
    state: AppState
    key_store: KeyStore | None
    jobs: Jobs
    url_fetcher: UrlFetcher | None
    limits: Limits | None

    @classmethod
    def build(
        cls,
        settings: Settings,
        traces: tracing.Tracing | None,
        exit_process: Callable[[int], None],
        outbound_resolver: Resolver,
    ) -> _Parts:
        metrics = Metrics(settings.prometheus_multiproc_dir)
        # Once per worker process (gunicorn builds one app per worker): a restart alert sees
        # this move whenever a node or one of its workers starts again.
        metrics.process_start.set_to_current_time()
        watchdog = Watchdog(
            settings.effective_watchdog_s, settings.graceful_timeout_s, exit_process
        )
        # The pool is sized before the models load, so a CUDA host is recognised the way
        # gunicorn's arbiter does it (NVML and the installed wheel), not by the loaded session.
        concurrency = gpu_layout.max_concurrency(settings, gpu_layout.probe(settings) is not None)
        scheduler = Scheduler(concurrency, settings.max_queue, observer=metrics, watchdog=watchdog)
        state = AppState(settings=settings, metrics=metrics, scheduler=scheduler)
        key_store = open_key_store(settings) if settings.auth == "required" else None
        job_runtime = Jobs(
            settings,
            state,
            jobs.options_from_record,
            key_store=key_store,
            item_finished=item_finished,
        )
        url_fetcher = (
            UrlFetcher.from_settings(settings, metrics, resolver=outbound_resolver)
            if settings.url_inputs
            else None
        )
        # THE place where the per-key rate limits and quotas are built (bgsvc.limits): the
        # auth middleware reads app.state.limits at each request; None means no limits.
        limits = build_limits(settings, metrics)
        return cls(
            settings=settings,
            traces=traces,
            metrics=metrics,
            watchdog=watchdog,
            state=state,
            key_store=key_store,
            jobs=job_runtime,
            url_fetcher=url_fetcher,
            limits=limits,
        )


def _lifespan(
    parts: _Parts,
    engine_loader: EngineLoader,
    on_load_failure: Callable[[], None],
    on_stuck: Callable[[], None],
) -> Lifespan:
    settings, state, watchdog = parts.settings, parts.state, parts.watchdog

    def on_trip() -> None:
        state.mark_stuck()
        on_stuck()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Once per serving process, before the model and the first image are allocated.
        tune_malloc(settings.malloc_mmap_threshold_bytes)
        loading = asyncio.create_task(_load_models(state, engine_loader, on_load_failure))
        # SIGTERM reaches us through bgsvc.server: /ready turns 503 first (drain window),
        # then the server stops listening and waits for in-flight requests, and only then
        # does this lifespan end.
        unregister = on_drain(state.start_draining)
        watching = asyncio.create_task(watchdog.run(on_trip))
        parts.jobs.start()
        try:
            yield
        finally:
            watching.cancel()
            unregister()
            state.start_draining()
            # Jobs still running get the request budget to end; the rest run after a restart.
            await parts.jobs.stop(settings.request_timeout_s)
            if not loading.done():
                loading.cancel()
                with suppress(asyncio.CancelledError):
                    await loading
            await anyio.to_thread.run_sync(state.scheduler.shutdown)
            await anyio.to_thread.run_sync(state.service.shutdown)
            await state.service.aclose()
            if parts.url_fetcher is not None:
                await parts.url_fetcher.aclose()
            await anyio.to_thread.run_sync(tracing.uninstall, parts.traces)
            # The app's, not parts.limits: tests swap them.
            if app.state.limits is not None:
                await app.state.limits.aclose()
            if parts.key_store is not None:
                parts.key_store.close()
            watchdog.finish()

    return lifespan


def _attach(app: FastAPI, parts: _Parts) -> None:
    """The parts the routes and middleware read from ``app.state``."""
    app.state.bgsvc = parts.state
    app.state.jobs = parts.jobs
    app.state.url_fetcher = parts.url_fetcher
    app.state.limits = parts.limits

    async def refund(tenant: str, credits: int) -> None:
        # Read at call time: the limits are the app's (tests swap them).
        current: Limits | None = app.state.limits
        if current is not None:
            await current.refund_quota(tenant, credits)

    parts.jobs.queue.refund = refund


def _include_routers(app: FastAPI, settings: Settings) -> None:
    app.include_router(health.router)
    app.include_router(remove.router)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(compat_rembg.router)
    app.include_router(compat_removebg.router)
    app.include_router(account.router)
    app.include_router(docs.router)
    if settings.ui_enabled:
        from bgsvc.routes import ui

        app.include_router(ui.build_router())


def _add_middleware(app: FastAPI, parts: _Parts) -> None:
    settings = parts.settings
    # Last added runs first: context (request id, metrics) wraps auth, which wraps admission.
    app.add_middleware(AdmissionMiddleware, state=parts.state)
    if parts.key_store is not None:
        # Outside admission: a refused key costs no slot and no upload read.
        app.add_middleware(
            AuthMiddleware,
            store=parts.key_store,
            pepper=settings.auth_pepper.get_secret_value(),
            trusted_proxies=settings.trusted_proxies,
            metrics=parts.metrics,
            max_key_labels=settings.metrics_max_keys,
        )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=parts.metrics,
        node_name=settings.effective_node_name,
        access_log=settings.access_log,
    )
    # Outermost: see add_cors.
    add_cors(app, settings.cors_origin_list)
