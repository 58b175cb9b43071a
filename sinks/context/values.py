"""Catalog values as the partition index holds them: instants as naive UTC, JSON objects as dicts, the
ends of a time range nobody bounded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from walduck.jsonexact import loads_exact
from walduck.timeutil import parse_instant_clamped

FAR_PAST = datetime(1, 1, 1)
FAR_FUTURE = datetime(9999, 12, 31)


def naive_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    # row times are walduck's instant text; the ones a DuckDB TIMESTAMP (years 1..9999) cannot hold
    # (±infinity, years > 9999, BC) are clamped to its ends (docs/contexts.md, "Values")
    ts = parse_instant_clamped(value)[0] if isinstance(value, str) else value
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts


def as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            loaded = loads_exact(value)
        except (ValueError, RecursionError):
            return {}
        return loaded if isinstance(loaded, dict) else {}
    return dict(value) if isinstance(value, dict) else {}
