"""Log lines: text by default, one JSON object per line on request, per-request records,
and gunicorn's own lines in the same format."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from gunicorn.config import Config as GunicornConfig
from PIL import Image

from bgsvc.config import Settings, get_settings
from bgsvc.log import LogFormat, configure_logging, gunicorn_logger_class, request_id_var
from tests.auth.conftest import PEPPER, FakeLimits

Capture = Callable[..., io.StringIO]


@pytest.fixture
def capture() -> Iterator[Capture]:
    """Configure the process's logging like a serving process does, into a buffer; the
    test's root logging is put back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def start(fmt: LogFormat = "text", level: str = "info") -> io.StringIO:
        buffer = io.StringIO()
        handler = configure_logging(level, fmt)
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        return buffer

    yield start
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in buffer.getvalue().splitlines() if line]
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # each line alone is one object


def test_text_with_the_request_id_is_the_default(capture: Capture) -> None:
    assert Settings().log_format == "text"
    buffer = capture()
    token = request_id_var.set("rid-text")
    try:
        logging.getLogger("bgsvc.example").warning("disk %s", "full")
    finally:
        request_id_var.reset(token)
    line = buffer.getvalue().strip()
    assert re.fullmatch(r"\S+ \S+ WARNING bgsvc\.example \[rid-text\] disk full", line)


def test_json_records_carry_time_level_logger_message_and_request_id(
    capture: Capture,
) -> None:
    buffer = capture("json")
    token = request_id_var.set("rid-json")
    try:
        # uvicorn adds a coloured copy of its messages; it has no place in a JSON line.
        logging.getLogger("bgsvc.example").info(
            "loaded %s", "tiny", extra={"color_message": "\x1b[36mloaded\x1b[0m %s"}
        )
    finally:
        request_id_var.reset(token)
    (record,) = json_lines(buffer)
    assert record["level"] == "INFO"
    assert record["logger"] == "bgsvc.example"
    assert record["message"] == "loaded tiny"
    assert record["request_id"] == "rid-json"
    assert "color_message" not in record
    stamp = datetime.fromisoformat(record["time"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 600


def test_an_exception_stays_inside_its_json_object(capture: Capture) -> None:
    buffer = capture("json")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("bgsvc.example").exception("boom")
    (record,) = json_lines(buffer)
    assert record["message"] == "boom" and record["level"] == "ERROR"
    assert "Traceback" in record["exc_info"] and "ZeroDivisionError" in record["exc_info"]


def test_each_request_gets_one_json_record_with_route_status_and_duration(
    capture: Capture, make_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = make_client()
    buffer = capture("json")
    response = client.post(
        "/remove-background", files={"file": photo_png}, headers={"X-Request-ID": "rid-req"}
    )
    assert response.status_code == 200
    records = [r for r in json_lines(buffer) if r["logger"] == "bgsvc.access"]
    assert len(records) == 1
    (record,) = records
    assert record["request_id"] == "rid-req"
    assert record["route"] == "/remove-background" and record["method"] == "POST"
    assert record["status"] == 200 and record["level"] == "INFO"
    assert isinstance(record["duration"], float) and 0 < record["duration"] < 60  # seconds


def test_errors_of_a_request_are_json_with_the_stack_and_its_request_id(
    capture: Capture, make_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    class Exploding:
        name = "tiny"

        def predict(self, rgb: Image.Image) -> np.ndarray:
            raise RuntimeError("kaboom")

    client = make_client(loader=lambda s: {"tiny": Exploding()})
    buffer = capture("json")
    response = client.post(
        "/remove-background", files={"file": photo_png}, headers={"X-Request-ID": "rid-500"}
    )
    assert response.status_code == 500
    records = json_lines(buffer)
    (error,) = [r for r in records if r["level"] == "ERROR"]
    assert error["request_id"] == "rid-500" and "RuntimeError: kaboom" in error["exc_info"]
    (access,) = [r for r in records if r["logger"] == "bgsvc.access"]
    assert access["status"] == 500 and access["request_id"] == "rid-500"


def test_probes_and_scrapes_are_logged_at_debug_only(
    capture: Capture, make_client: Callable[..., TestClient]
) -> None:
    client = make_client()
    info = capture("json", "info")
    assert client.get("/health").status_code == 200
    assert "bgsvc.access" not in info.getvalue()
    debug = capture("json", "debug")
    assert client.get("/health").status_code == 200
    (record,) = [r for r in json_lines(debug) if r["logger"] == "bgsvc.access"]
    assert record["level"] == "DEBUG" and record["route"] == "/health"


def test_the_per_request_record_can_be_turned_off(
    capture: Capture, make_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = make_client(access_log=False)
    buffer = capture("json")
    assert client.post("/remove-background", files={"file": photo_png}).status_code == 200
    assert "bgsvc.access" not in buffer.getvalue()


def test_gunicorn_and_uvicorn_lines_take_the_chosen_format(
    capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSVC_LOG_FORMAT", "json")
    get_settings.cache_clear()
    try:
        cfg = GunicornConfig()
        cfg.set("errorlog", "-")
        logger = gunicorn_logger_class()(cfg)
    finally:
        get_settings.cache_clear()
    # The handler gunicorn's logger chose is the process's one handler; point it here.
    root_handler = logging.getLogger().handlers[0]
    assert logger.error_log.handlers == [root_handler]
    buffer = io.StringIO()
    assert isinstance(root_handler, logging.StreamHandler)
    root_handler.setStream(buffer)
    try:
        logger.info("Booting worker with pid: %s", 42)
    finally:
        logger.error_log.handlers.clear()
    (record,) = json_lines(buffer)
    assert record["logger"] == "gunicorn.error"
    assert record["message"] == "Booting worker with pid: 42"
    assert not logger.error_log.propagate  # one line, not one more through the root


LINE_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def server_lines(buffer: io.StringIO) -> list[str]:
    """The text lines, less those of the test client (httpx logs each request it sends)."""
    return [line for line in buffer.getvalue().splitlines() if " httpx" not in line[:40]]


def test_a_path_with_line_breaks_is_logged_as_one_escaped_text_line(
    capture: Capture, make_client: Callable[..., TestClient]
) -> None:
    client = make_client()
    buffer = capture("text")
    forged = '2026-01-01 00:00:00,000 INFO bgsvc.access [-] "GET /admin" 200 0.001s'
    response = client.get(
        f"/nothing%0A{forged.replace(' ', '%20')}%0D%0Ahere",
        headers={"X-Request-ID": "rid\x1b[2J\x0bx", "User-Agent": "agent\x1b]0;owned\x07"},
    )
    assert response.status_code == 404
    # The id with control characters is not echoed: a fresh one is minted instead.
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    (line,) = server_lines(buffer)
    assert LINE_START.match(line) and "bgsvc.access" in line
    assert f"/nothing\\x0a{forged}\\x0d\\x0ahere" in line
    assert not re.search(r"[\x00-\x1f\x7f]", line)


def test_a_control_character_in_a_forwarded_address_is_escaped_in_text(
    capture: Capture, make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    app = make_client(
        auth="required",
        auth_pepper=PEPPER,
        data_dir=tmp_path / "data",
        trusted_proxies="10.0.0.0/8",
    ).app
    app.state.limits = FakeLimits(failed_auth_budget=0)  # type: ignore[attr-defined]
    buffer = capture("text")
    # A trusted proxy passes on what its client claimed; that claim is the client's text.
    proxy = TestClient(app, client=("10.1.2.3", 5000))
    response = proxy.get("/jobs/x", headers={"X-Forwarded-For": "198.51.100.1\x1b[2J\x0b\x7f"})
    assert response.status_code == 429
    lines = server_lines(buffer)
    assert len(lines) == 2 and all(LINE_START.match(line) for line in lines)
    (warning,) = [line for line in lines if "throttled" in line]
    assert "failed authentications from 198.51.100.1\\x1b[2J\\x0b\\x7f: throttled" in warning


def test_an_exception_message_cannot_start_a_text_line_of_its_own(capture: Capture) -> None:
    buffer = capture("text")
    try:
        raise ValueError("bad path /x\u2028\n2026-01-01 00:00:00,000 INFO bgsvc.access forged\r")
    except ValueError:
        logging.getLogger("bgsvc.example").exception("failed on %s", "/x\ny")
    first, *rest = buffer.getvalue().splitlines()
    assert LINE_START.match(first) and first.endswith("failed on /x\\x0ay")
    # The traceback follows, every line indented under the record, control characters
    # escaped: only the first line can be read as a record.
    assert rest[0] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in rest)
    assert "  2026-01-01 00:00:00,000 INFO bgsvc.access forged\\x0d" in rest
    assert any(line.endswith("ValueError: bad path /x\\u2028") for line in rest)


def test_json_lines_keep_control_characters_escaped_inside_the_object(
    capture: Capture, make_client: Callable[..., TestClient]
) -> None:
    client = make_client()
    buffer = capture("json")
    assert client.get("/nothing%0Aforged%0D%E2%80%A8").status_code == 404
    lines = [line for line in buffer.getvalue().splitlines() if '"bgsvc.access"' in line]
    (line,) = lines
    assert "\\n" in line and "\\u2028" in line and not re.search(r"[\x00-\x1f]", line)
    assert json.loads(line)["path"] == "/nothing\nforged\r\u2028"


def test_outbound_request_urls_with_their_tokens_stay_out_of_the_log(capture: Capture) -> None:
    saved = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    try:
        buffer = capture("text", "info")
        # What httpx writes for each webhook delivery or image_url fetch, at INFO.
        logging.getLogger("httpx").info('HTTP Request: POST http://hooks/a?token=s3cret "200"')
        logging.getLogger("bgsvc.jobs").info("webhook msg_job_1 delivered")
        text = buffer.getvalue()
        assert "s3cret" not in text
        assert "msg_job_1 delivered" in text
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
