"""UTC, ISO 8601 with offset: the only time format walduck writes."""

from __future__ import annotations

from datetime import UTC, datetime

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """``2024-01-01T00:00:00.123456+00:00`` (naive values are taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat()


def parse_iso(text: str) -> datetime:
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def pg_micros_to_datetime(micros: int) -> datetime:
    """PostgreSQL protocol timestamps are microseconds since 2000-01-01 UTC."""
    from datetime import timedelta

    return PG_EPOCH + timedelta(microseconds=micros)


def datetime_to_pg_micros(ts: datetime) -> int:
    delta = ts.astimezone(UTC) - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
