"""One log format for every component (issue 17): the same fields in text or JSON lines.

Fields: ``ts`` (UTC ISO 8601 with offset, milliseconds), ``level``, ``logger``, ``component`` (connector,
compactor, query, or the command), ``msg``; ``requestId`` when the record carries one (the query service's
``x-request-id``), ``exc`` with the traceback when there is one. ``WALDUCK_LOG_FORMAT=json|text`` and
``WALDUCK_LOG_LEVEL`` (or ``--log-format`` / ``--log-level``) choose. uvicorn's loggers go through the same
handler (``log_config=None``).
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from walduck.config import LogFormat, LogLevel, LogSettings

_state: dict[str, Any] = {"component": "walduck", "level": None, "format": None}
# the request being served (the query service's middleware sets it): every line logged meanwhile carries it
REQUEST_ID: ContextVar[str | None] = ContextVar("walduck_request_id", default=None)


def _ts(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": _ts(record),
        "level": record.levelname,
        "logger": record.name,
        "component": _state["component"],
        "msg": record.getMessage(),
    }
    request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
    if request_id:
        fields["requestId"] = request_id
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(fields, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        f = _fields(record)
        rid = f" [{f['requestId']}]" if "requestId" in f else ""
        line = f"{f['ts']} {f['level']} {f['component']} {f['logger']}:{rid} {f['msg']}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RepeatFilter(logging.Filter):
    """A WARNING-or-worse line repeated within ``interval_s`` is written once per interval, with how many copies
    were held back (a client polling for a missing topic logged the same ERROR ~10 times a second)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[
            tuple[str, int, str], list[float]
        ] = {}  # key -> [last written (monotonic), held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.getMessage()} ({int(seen[1])} identical lines held back in {self.interval_s:g} s)"
            )
            record.args = None
        if len(self._seen) > 1000:  # bounded: forget the oldest half
            for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                del self._seen[old]
        self._seen[key] = [now, 0]
        return True


def setup_logging(
    component: str | None = None, level: str | None = None, fmt: str | None = None, *, stream: Any = None
) -> None:
    """(Re)configure the root logger: one stderr handler in the chosen format. Later calls keep what earlier
    ones chose unless they say otherwise (the ``walduck`` callback sets level/format, the command its component)."""
    settings = LogSettings()
    if component:
        _state["component"] = component
    if level:
        _state["level"] = LogLevel(level.upper()).value
    if fmt:
        _state["format"] = LogFormat(fmt.lower())
    chosen_level = _state["level"] or settings.log_level.value
    chosen_format = _state["format"] or settings.log_format
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen_format == LogFormat.JSON else TextFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(chosen_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # no handlers of their own: the root's
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True


def level_option(where: str = "") -> Any:
    """The ``--log-level`` option every command takes (typer: annotate it ``LogLevel``)."""
    import typer

    return typer.Option(
        None, "--log-level", case_sensitive=False, help=f"Log level{where} [WALDUCK_LOG_LEVEL, default INFO]."
    )


def format_option(where: str = "") -> Any:
    """The ``--log-format`` option every command takes (typer: annotate it ``LogFormat``)."""
    import typer

    return typer.Option(
        None,
        "--log-format",
        case_sensitive=False,
        help=f"text or json{where} [WALDUCK_LOG_FORMAT, default text].",
    )
