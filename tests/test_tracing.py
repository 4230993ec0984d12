"""Tracing: off and free by default; on, a server span per request that joins the caller's
trace, the pipeline's stages as its children, and spans delivered over OTLP/HTTP by a real
gunicorn node configured through OTEL_* variables only."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from bgsvc import tracing
from bgsvc.app import create_app
from bgsvc.config import Settings
from tests.cluster.conftest import free_ports
from tests.conftest import wait_ready
from tests.models import TINY_SIZE

REPO = Path(__file__).resolve().parents[1]
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
STAGES = {"decode", "preprocess", "queue", "inference", "mask", "compose", "encode"}


def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
    ],
)
def test_otel_variables_decide_whether_tracing_is_on(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], exporters: list[str]
) -> None:
    _no_otel_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().trace_exporters == exporters


def test_an_unknown_trace_exporter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValidationError, match="zipkin"):
        Settings()


@pytest.fixture
def traced(
    make_settings: Callable[..., Settings],
) -> Iterator[Callable[..., tuple[TestClient, InMemorySpanExporter]]]:
    """A ready app whose spans all land in memory."""
    opened: list[TestClient] = []

    def start(**overrides: Any) -> tuple[TestClient, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        app = create_app(
            make_settings(**overrides), span_exporter=exporter, on_load_failure=lambda: None
        )
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        wait_ready(client)
        return client, exporter

    yield start
    for client in opened:
        client.__exit__(None, None, None)


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_stages_are_children_of_the_request_span_in_the_callers_trace(
    traced: Callable[..., tuple[TestClient, InMemorySpanExporter]], photo_png: bytes
) -> None:
    client, exporter = traced()
    exporter.clear()
    response = client.post(
        "/remove-background", files={"file": photo_png}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    spans = _by_name(exporter.get_finished_spans())
    server = spans.pop("POST /remove-background")
    assert set(spans) == STAGES
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/remove-background"
    assert server.attributes["http.response.status_code"] == 200
    # The caller's trace goes on: same trace id, the caller's span is the parent.
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    for stage in spans.values():  # stages ran in thread pools, context and all
        assert stage.context.trace_id == server.context.trace_id
        assert stage.parent is not None and stage.parent.span_id == server.context.span_id
    # The response names the request's span so the caller can find the trace.
    assert response.headers["traceresponse"] == (
        f"00-{CALLER_TRACE}-{server.context.span_id:016x}-01"
    )


def test_without_a_traceparent_each_request_starts_its_own_trace(
    traced: Callable[..., tuple[TestClient, InMemorySpanExporter]], photo_png: bytes
) -> None:
    client, exporter = traced()
    exporter.clear()
    for _ in range(2):
        assert client.post("/remove-background", files={"file": photo_png}).status_code == 200
    servers = [s for s in exporter.get_finished_spans() if s.name.startswith("POST")]
    assert len(servers) == 2 and all(s.parent is None for s in servers)
    assert servers[0].context.trace_id != servers[1].context.trace_id


def test_the_start_up_rehearsal_of_the_stages_makes_no_trace(
    traced: Callable[..., tuple[TestClient, InMemorySpanExporter]],
) -> None:
    # A made-up photo at every process start is no request's: no trace of its own.
    client, exporter = traced(warm_stages=True)
    assert client.get("/ready").status_code == 200
    assert not [s for s in exporter.get_finished_spans() if not s.name.startswith("GET")]


def test_probes_are_not_traced(
    traced: Callable[..., tuple[TestClient, InMemorySpanExporter]],
) -> None:
    client, exporter = traced()
    exporter.clear()
    for path in ("/health", "/ready", "/metrics"):
        response = client.get(path, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200 and "traceresponse" not in response.headers
    assert client.get("/models").status_code == 200
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /models"]


def test_outbound_calls_carry_the_current_trace(
    traced: Callable[..., tuple[TestClient, InMemorySpanExporter]],
) -> None:
    off: dict[str, str] = {}
    tracing.inject(off)
    assert off == {}
    traced()
    with tracing.span("webhook") as current:
        headers: dict[str, str] = {}
        tracing.inject(headers)
    context = current.get_span_context()
    flags = int(context.trace_flags)
    assert (
        headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    )


def test_a_stopped_app_flushes_its_spans_and_leaves_tracing_off(
    make_settings: Callable[..., Settings],
) -> None:
    exporter = InMemorySpanExporter()
    app = create_app(make_settings(), span_exporter=exporter, on_load_failure=lambda: None)
    with TestClient(app):
        assert tracing.span("a") is not tracing.span("b")
    assert tracing.span("a") is tracing.span("b")  # the shared no-op
    # The provider was shut down, its exporter with it.
    assert exporter.export([]) == SpanExportResult.FAILURE


_OFF_PROBE = """
import json, sys, tempfile, time
from pathlib import Path
from fastapi.testclient import TestClient
from bgsvc import tracing
from bgsvc.app import create_app
from bgsvc.config import Settings
from tests.conftest import encode_image, subject_image
tiny = {"path": sys.argv[1], "profile": "imgly", "input_size": int(sys.argv[2])}
settings = Settings(model_dir=Path(tempfile.mkdtemp()), default_model="tiny",
    custom_models={"tiny": tiny}, intra_op_threads=1)
with TestClient(create_app(settings, on_load_failure=lambda: None)) as client:
    while client.get("/ready").status_code != 200:
        time.sleep(0.01)
    png = encode_image(subject_image())
    status = client.post("/remove-background", files={"file": ("a.png", png)}).status_code
    traceresponse = "traceresponse" in client.get("/models").headers
    from opentelemetry import trace
    print(json.dumps({
        "status": status,
        "traceresponse": traceresponse,
        "sdk": sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk",
            "opentelemetry.exporter"))),
        "provider": type(trace.get_tracer_provider()).__name__,
        "noop_span": tracing.span("a") is tracing.span("b"),
    }))
"""


def test_tracing_off_imports_no_sdk_and_adds_nothing_to_requests(
    tiny_model_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    # Our module alone imports no OpenTelemetry at all.
    bare = subprocess.run(
        [sys.executable, "-c", "import sys, bgsvc.tracing; print(sorted(sys.modules))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "opentelemetry" not in bare.stdout
    # A served request: FastAPI imports the OpenTelemetry API itself, but no SDK or
    # exporter is loaded, no provider is set (FastAPI's telemetry stays on its fast path)
    # and our spans are the shared no-op.
    served = subprocess.run(
        [sys.executable, "-c", _OFF_PROBE, str(tiny_model_path), str(TINY_SIZE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert result == {
        "status": 200,
        "traceresponse": False,
        "sdk": [],
        "provider": "ProxyTracerProvider",
        "noop_span": True,
    }


class _OtlpReceiver:
    """A tiny OTLP/HTTP trace receiver on loopback: keeps every decoded export."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.exports: list[tuple[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                receiver.exports.append((self.path, message))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span received."""
        out = []
        for _, message in list(self.exports):
            for resource_spans in message.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out


@pytest.fixture
def receiver() -> Iterator[_OtlpReceiver]:
    made = _OtlpReceiver()
    yield made
    made.server.shutdown()
    made.server.server_close()


def test_a_gunicorn_node_exports_spans_over_otlp_and_logs_only_json(
    tiny_model_path: Path, tmp_path: Path, receiver: _OtlpReceiver, photo_png: bytes
) -> None:
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BGSVC_"))}
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "PYTHONPATH": str(REPO / "src"),
            "BGSVC_PORT": str(port),
            "BGSVC_DEFAULT_MODEL": "tiny",
            "BGSVC_CUSTOM_MODELS": json.dumps(
                {
                    "tiny": {
                        "path": str(tiny_model_path),
                        "profile": "imgly",
                        "input_size": TINY_SIZE,
                    }
                }
            ),
            "BGSVC_MODEL_DIR": str(tmp_path / "models"),
            # Every BGSVC_ variable was dropped above, the test's data folder with them: a
            # job database under the home folder would have this node run its jobs, whose
            # inference spans would stand in for the request's.
            "BGSVC_DATA_DIR": str(tmp_path / "data"),
            "BGSVC_INTRA_OP_THREADS": "1",
            "BGSVC_DRAIN_SECONDS": "0",
            "BGSVC_LOG_FORMAT": "json",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            # Only the standard variables: where to send, under which name, how soon.
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_SERVICE_NAME": "bgsvc-e2e",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    node = subprocess.Popen(
        [str(REPO / "deploy" / "start.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and node.poll() is None:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert node.poll() is None, "node exited"
        response = httpx.post(
            f"{url}/remove-background",
            files={"file": ("a.png", photo_png, "image/png")},
            headers={"traceparent": TRACEPARENT, "X-Request-ID": "rid-e2e"},
            timeout=30,
        )
        assert response.status_code == 200
        assert response.headers["traceresponse"].startswith(f"00-{CALLER_TRACE}-")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = {span.name for _, span in receiver.spans()}
            if {"POST /remove-background", *STAGES} <= names:
                break
            time.sleep(0.1)
    finally:
        node.send_signal(signal.SIGTERM)
        output, _ = node.communicate(timeout=60)

    received = receiver.spans()
    assert {path for path, _ in receiver.exports} == {"/v1/traces"}
    by_name = {span.name: (resource, span) for resource, span in received}
    assert {"POST /remove-background", *STAGES} <= set(by_name)
    resource, server = by_name["POST /remove-background"]
    assert resource["service.name"] == "bgsvc-e2e"
    assert server.trace_id.hex() == CALLER_TRACE and server.parent_span_id.hex() == CALLER_SPAN
    assert by_name["inference"][1].parent_span_id == server.span_id

    # Every line the node wrote (gunicorn's arbiter, uvicorn, the app) is one JSON object.
    lines = [line for line in output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"gunicorn.error", "bgsvc.access"} <= loggers
    (access,) = [
        r
        for r in records
        if r["logger"] == "bgsvc.access"
        and r["status"] == 200
        and r["route"] == "/remove-background"
    ]
    assert access["request_id"] == "rid-e2e" and access["trace_id"] == CALLER_TRACE
