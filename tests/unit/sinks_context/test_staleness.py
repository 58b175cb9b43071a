"""One staleness definition (issue 14, item 5): now − newest applied commit, max over shards, one gauge writer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sinks.context import staleness
from walduck import metrics
from walduck.timeutil import iso

ROOT = Path(__file__).resolve().parents[3]


def test_definition() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert staleness.of(None, now) is None
    assert staleness.of(iso(now - timedelta(seconds=7.5)), now) == 7.5
    assert staleness.of(iso(now + timedelta(seconds=3)), now) == 0.0  # a clock ahead never gives < 0
    assert staleness.of("not a time", now) is None
    assert staleness.overall([None, 2.0, 5.0, None]) == 5.0
    assert staleness.overall([None]) is None


def test_publish_sets_the_shards_gauge() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert staleness.publish(97, iso(now - timedelta(seconds=4)), now) == 4.0
    assert metrics.SHARD_STALENESS.labels(shard="97")._value.get() == 4.0


def test_only_the_staleness_module_writes_the_gauge() -> None:
    writers = [
        path.relative_to(ROOT).as_posix()
        for package in ("walduck", "connectors", "pipeline", "sinks", "stack")
        for path in (ROOT / package).rglob("*.py")
        if "SHARD_STALENESS." in path.read_text()
    ]
    assert writers == ["sinks/context/staleness.py"]
