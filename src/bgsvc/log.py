"""Logging for a serving process: text or one JSON object per line, the request id (and
the trace id when tracing is on) on every record, and one record per request."""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import Any, Literal

from bgsvc import tracing

LogFormat = Literal["text", "json"]

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# Probes and scrapes arrive every few seconds from every balancer, kubelet and Prometheus:
# their records are kept at debug so that info shows traffic only.
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})

access_logger = logging.getLogger("bgsvc.access")

# One handler per process, shared by the root logger and gunicorn's error log, so a later
# configure_logging (gunicorn calls it in the arbiter, then again in on_starting) changes
# every line's format in one place.
_handler: logging.StreamHandler[Any] | None = None


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # A record may name its request itself (extra=): errors are logged by the handler
        # outside the middleware that sets the context variable.
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        ids = tracing.current_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True


# Characters that end a line or steer a terminal: C0 and C1 controls, DEL, and the Unicode
# line and paragraph separators. The request path arrives percent-decoded, so a client can
# put any of them in it (%0A), and in header values it chooses (User-Agent, X-Forwarded-For).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _hex(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as ``\\xNN`` (``\\uNNNN``)."""
    return _UNSAFE.sub(_hex, text)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT with one line per record whatever the record holds, so no client can
    start a line that reads as a record of its own: the record's line is escaped, and the
    lines of a traceback are escaped one by one and indented under it."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    # An exception's message may quote the client (a path, a header): only the lines the
    # traceback module wrote may break the record, and none of them starts at column 0.
    return "\n".join("  " + escape_controls(line) for line in text.split("\n"))


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    # Fields not named here (route, status, duration, trace_id...) come from each record's
    # extras; exceptions land in "exc_info" inside the same object. uvicorn's extra
    # color_message repeats the message with terminal colour codes.
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s %(request_id)s",
        rename_fields={"levelname": "level", "name": "logger"},
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        timestamp="time",
    )


def formatter_for(fmt: LogFormat) -> logging.Formatter:
    """The formatter of every line in format ``fmt``."""
    # JSON needs nothing more: json.dumps writes control characters as \n or \u001b.
    return _json_formatter() if fmt == "json" else TextFormatter()


def configure_logging(level: str, fmt: LogFormat = "text") -> logging.Handler:
    """Root logging for a serving process; called by the CLI/gunicorn, never at import.
    Returns the one handler every line goes through."""
    global _handler
    if _handler is None:
        _handler = logging.StreamHandler()
        _handler.addFilter(_ContextFilter())
    _handler.setFormatter(formatter_for(fmt))
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    root.setLevel(level.upper())
    # httpx logs every request's full URL at INFO: a webhook's or an image_url's query may
    # hold the tenant's token. Our own lines name deliveries by event id instead.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # warnings.warn from libraries would otherwise reach stderr as raw lines.
    logging.captureWarnings(fmt == "json")
    return _handler


def log_request(method: str, path: str, route: str, status: int, duration: float) -> None:
    """The per-request record: ``route`` is the route template, ``duration`` in seconds."""
    level = logging.DEBUG if path in QUIET_ROUTES else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    access_logger.log(
        level,
        '"%s %s" %d %.3fs',
        method,
        path,
        status,
        duration,
        extra={
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration": round(duration, 6),
        },
    )


def gunicorn_logger_class() -> type:
    """gunicorn's ``logger_class`` (deploy/gunicorn.conf.py): gunicorn's own lines, and
    uvicorn's in its workers (they take gunicorn's error handlers), in our format."""
    from gunicorn.glogging import Logger

    from bgsvc.config import get_settings

    class GunicornLogger(Logger):  # type: ignore[misc]
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            settings = get_settings()
            handler = configure_logging(settings.log_level, settings.log_format)
            # gunicorn's own stderr handler writes its own format; ours replaces it.
            for log in (self.error_log, self.access_log):
                ours = [h for h in log.handlers if getattr(h, "_gunicorn", False)]
                for h in ours:
                    log.removeHandler(h)
                if ours:
                    log.addHandler(handler)

    return GunicornLogger
