"""One log format (issue 17): the same fields in text and JSON for every component and uvicorn, --log-level and
--log-format on the root command and on every long-running component command, repeated warnings held back."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest
import typer.main

from stack.cli import app
from walduck import logs

FIELDS = ["ts", "level", "logger", "component", "msg"]


@pytest.fixture
def captured():
    stream = io.StringIO()
    saved = dict(logs._state)
    yield stream
    logs._state.update(saved)
    logging.getLogger().handlers.clear()


def test_json_lines_carry_the_fields(captured: io.StringIO) -> None:
    logs.setup_logging("compactor", "info", "json", stream=captured)
    logging.getLogger("pipeline.runner").info("holding %s", [1, 2])
    logging.getLogger("uvicorn.access").info("GET /ready 200")
    logging.getLogger("x").debug("below the level")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert list(first) == FIELDS and first["msg"] == "holding [1, 2]" and first["component"] == "compactor"
    assert second["logger"] == "uvicorn.access" and second["component"] == "compactor"
    assert datetime.fromisoformat(first["ts"]).utcoffset().total_seconds() == 0


def test_text_lines_carry_the_same_fields(captured: io.StringIO) -> None:
    logs.setup_logging("connector", "warning", "text", stream=captured)
    logging.getLogger("connectors.connector").warning("lost", extra={"request_id": "r-1"})
    (line,) = captured.getvalue().splitlines()
    ts, level, component, logger, rest = line.split(" ", 4)
    assert datetime.fromisoformat(ts).utcoffset().total_seconds() == 0
    assert (level, component, logger, rest) == ("WARNING", "connector", "connectors.connector:", "[r-1] lost")


def test_repeated_warnings_are_written_once_per_interval(captured: io.StringIO) -> None:
    logs.setup_logging("connector", "info", "json", stream=captured)
    log = logging.getLogger("aiokafka.cluster")
    for _ in range(50):
        log.error("Topic %s not found in cluster metadata", "walduck.changes")
    log.error("another line")
    for _ in range(5):
        logging.getLogger("x").info("info lines are never held back")
    lines = [json.loads(line)["msg"] for line in captured.getvalue().splitlines()]
    assert lines.count("Topic walduck.changes not found in cluster metadata") == 1
    assert "another line" in lines and lines.count("info lines are never held back") == 5
    flt = next(f for f in logging.getLogger().handlers[0].filters if isinstance(f, logs.RepeatFilter))
    flt.interval_s = 0.0  # the interval has passed: the next copy is written with the count held back
    log.error("Topic %s not found in cluster metadata", "walduck.changes")
    assert "(49 identical lines held back" in captured.getvalue().splitlines()[-1]


@pytest.mark.parametrize("path", [(), ("connector", "run"), ("compactor", "run"), ("query", "serve")])
def test_log_options_on_every_component_command(path: tuple[str, ...]) -> None:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert {"--log-level", "--log-format"} <= options, (path, sorted(options))
