"""Optional OpenTelemetry tracing behind a tiny interface: ``with span("decode"):``.

Off unless the settings name a trace exporter or an OTLP endpoint (bgsvc.config reads the
OTEL_* variables that decide). Off, nothing here imports the OpenTelemetry SDK, every
call returns at once and FastAPI's own telemetry is switched off.

On, FastAPI's native telemetry makes the server span of each request (W3C ``traceparent``
extracted with the global propagator, so the span joins the caller's trace); the stages
of the pipeline are its children; the response names the span in ``traceresponse`` (W3C
Trace Context Level 2); outbound calls carry the context with :func:`inject`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from bgsvc import __version__

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from bgsvc.config import Settings

_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


class Tracing:
    """A tracer provider and bgsvc's tracer on it."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("bgsvc", __version__)

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporters."""
        self.provider.shutdown()


# One app per process: the tracing of the app built last (None: off).
_active: Tracing | None = None


def _otlp_exporter(settings: Settings) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = settings.otel_exporter_otlp_traces_endpoint or None
    if endpoint is None and settings.otel_exporter_otlp_endpoint:
        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    # Headers, timeout, compression and certificates: the exporter's own OTEL_* variables.
    return OTLPSpanExporter(endpoint=endpoint)


def setup(settings: Settings, exporter: SpanExporter | None = None) -> Tracing | None:
    """The tracing the settings ask for (plus ``exporter``, synchronously, for tests), or
    None when tracing is off."""
    if exporter is None and not settings.trace_exporters:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = Resource.create(
        {
            "service.name": settings.otel_service_name,
            "service.version": __version__,
            "service.instance.id": settings.effective_node_name,
        }
    )
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for name in settings.trace_exporters:
        chosen = ConsoleSpanExporter() if name == "console" else _otlp_exporter(settings)
        provider.add_span_processor(BatchSpanProcessor(chosen))
    return Tracing(provider)


def install(tracing: Tracing | None) -> None:
    """Make ``tracing`` the one :func:`span` and friends use (None: off)."""
    global _active
    _active = tracing


def uninstall(tracing: Tracing | None) -> None:
    """Flush and stop ``tracing``; the process is back to no tracing if it was active."""
    global _active
    if tracing is None:
        return
    if _active is tracing:
        _active = None
    tracing.shutdown()


def fastapi_telemetry(
    tracing: Tracing | None, exclude: Callable[[MutableMapping[str, Any]], bool]
) -> TelemetryConfig:
    """FastAPI's ``telemetry`` argument: its server spans on our provider when on (no
    operation spans: the pipeline's stages are what a trace of this service is about),
    nothing at all when off. Its metrics and logs stay off: Prometheus and our logs
    cover them. ``exclude`` skips routes (probes) that would only add noise."""
    if tracing is None:
        return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    return {
        "metrics": False,
        "logs": False,
        "auto_configure": False,
        "tracing": True,
        "tracer_provider": tracing.provider,
        "operation_spans": False,
        "exclude": exclude,
    }


# Work of no request's (the start-up rehearsal of the stages) makes no spans: it would be
# a trace of its own from every process start.
_quiet: ContextVar[bool] = ContextVar("bgsvc_tracing_quiet", default=False)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Within the block (and the threads it hands contextvars to), span() and record()
    make nothing."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current one around a block; a shared no-op when off."""
    if _active is None or _quiet.get():
        return _NO_SPAN
    return _active.tracer.start_as_current_span(name)


def record(name: str, seconds: float) -> None:
    """A child span that ends now and lasted ``seconds`` (a wait measured elsewhere)."""
    if _active is None or _quiet.get():
        return
    end = time.time_ns()
    started = _active.tracer.start_span(name, start_time=end - int(seconds * 1e9))
    started.end(end_time=end)


def _current_context() -> tuple[int, int, int] | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return context.trace_id, context.span_id, int(context.trace_flags)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log records; None when off."""
    if _active is None:
        return None
    current = _current_context()
    if current is None:
        return None
    return f"{current[0]:032x}", f"{current[1]:016x}"


def traceresponse() -> str | None:
    """The ``traceresponse`` header value for the current (server) span, or None."""
    if _active is None:
        return None
    current = _current_context()
    if current is None:
        return None
    return f"00-{current[0]:032x}-{current[1]:016x}-{current[2]:02x}"


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context (``traceparent``...) to an outbound request's
    headers, with the same global propagator that read the incoming one."""
    if _active is None:
        return
    from opentelemetry import propagate

    propagate.inject(headers)
