"""UTC, ISO 8601 with offset: the only time format walduck writes (plus its documented encoding of the
instants ISO 8601's basic form cannot hold: see "Instants" below)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from walduck.errors import Unprocessable

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


# ------------------------------------------------------------------------------------------------------
# Instants with no ISO 8601 basic form: PostgreSQL's timestamp/timestamptz reach from 4713 BC to 294276 AD
# and hold ``infinity``/``-infinity``; Python's datetime (and plain ISO 8601) covers years 1..9999.
#
# The encoding every walduck record, delta and context uses (``docs/design.md``, "Values"):
#
# * years 1..9999: ``iso()`` as ever, ``2024-01-01T00:00:00.5+00:00`` (UTC, ``+00:00``);
# * ``infinity`` / ``-infinity``: those two strings, as PostgreSQL prints them;
# * years above 9999: ISO 8601 expanded years with a sign, ``+10000-01-01T00:00:00+00:00``;
# * years before 1 (BC): ISO 8601 astronomical years, ``0000`` = 1 BC, ``-0001`` = 2 BC:
#   ``'0001-01-01 00:30:00+01'`` (an instant in 1 BC in UTC) is ``0000-12-31T23:30:00+00:00``.
#
# All are UTC with a ``+00:00`` offset and microseconds only when non-zero, like ``iso()``; the format
# round-trips through :func:`parse_instant` / :func:`format_instant` exactly.

INFINITY = "infinity"
NEG_INFINITY = "-infinity"

_PG_TS = re.compile(
    r"^(\d{4,})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
    r"(?:([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?)?( BC)?$"
)
_ISO_EXPANDED = re.compile(
    r"^([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?(?:Z|([+-])(\d\d):(\d\d))$"
)
_EPOCH_DAYS = 719_162  # days from 0001-01-01 to 1970-01-01 (proleptic Gregorian)


class InstantError(Unprocessable, ValueError):
    """Text that is not a PostgreSQL timestamp (nor walduck's encoding of one)."""

    reason = "bad timestamp"


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Howard Hinnant's algorithm: days since 1970-01-01 of a proleptic Gregorian date, any (astronomical) year
    y -= m <= 2
    era = y // 400  # (floor division: the C original's "y - 399" adjusts for truncation, Python floors)
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


def _micros(y: int, mo: int, d: int, h: int, mi: int, s: int, frac: str | None, offset_s: int) -> int:
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 24 and mi <= 59 and s <= 60):
        raise InstantError("field out of range")
    days = _days_from_civil(y, mo, d)
    if _civil_from_days(days) != (y, mo, d):
        raise InstantError("no such day")
    seconds = days * 86_400 + h * 3600 + mi * 60 + s - offset_s
    return seconds * 1_000_000 + int((frac or "").ljust(6, "0") or 0)


def format_micros(micros: int) -> str:
    """Microseconds since 1970-01-01 UTC -> walduck's instant text (any year)."""
    seconds, us = divmod(micros, 1_000_000)
    days, secs = divmod(seconds, 86_400)
    y, m, d = _civil_from_days(days)
    year = f"{y:04d}" if 0 <= y <= 9999 else (f"+{y}" if y > 9999 else f"-{-y:04d}")
    clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    return f"{year}-{m:02d}-{d:02d}T{clock}{f'.{us:06d}' if us else ''}+00:00"


def pg_timestamp(text: str) -> str:
    """PostgreSQL's ISO output of a ``timestamp``/``timestamptz`` (``2024-01-01 00:00:00.5+05:30``,
    ``10000-01-01 00:00:00+00``, ``0001-12-31 23:30:00+00 BC``, ``infinity``; no offset = UTC) -> walduck's
    instant text. Raises :class:`InstantError`."""
    if text in (INFINITY, NEG_INFINITY):
        return text
    m = _PG_TS.match(text)
    if m is None:
        raise InstantError(f"{text[:80]!r} is not a PostgreSQL timestamp")
    year = int(m[1])
    if m[12]:  # N BC is astronomical year 1 - N
        year = 1 - year
    offset = 0
    if m[8]:
        offset = int(m[9]) * 3600 + int(m[10] or 0) * 60 + int(m[11] or 0)
        offset = -offset if m[8] == "-" else offset
    return format_micros(_micros(year, int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), m[7], offset))


def instant_micros(text: str) -> int | None:
    """walduck's instant text (or any ISO 8601 with offset) -> microseconds since 1970-01-01 UTC; ``None``
    for ``±infinity``. Raises :class:`InstantError`."""
    if text in (INFINITY, NEG_INFINITY):
        return None
    m = _ISO_EXPANDED.match(text)
    if m is None:
        try:
            return datetime_to_micros(parse_iso(text))
        except ValueError as exc:
            raise InstantError(f"{text[:80]!r} is not an instant") from exc
    offset = 0
    if m[8]:
        offset = (int(m[9]) * 3600 + int(m[10]) * 60) * (-1 if m[8] == "-" else 1)
    return _micros(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), m[7], offset)


def datetime_to_micros(ts: datetime) -> int:
    return datetime_to_pg_micros(ts) + _PG_EPOCH_MICROS


_PG_EPOCH_MICROS = 946_684_800 * 1_000_000
_MIN_MICROS = datetime_to_pg_micros(datetime(1, 1, 1, tzinfo=UTC)) + _PG_EPOCH_MICROS
_MAX_MICROS = (
    datetime_to_pg_micros(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) + _PG_EPOCH_MICROS
)


def parse_instant_clamped(text: str) -> tuple[datetime, bool]:
    """An instant text as an aware UTC datetime, clamped into datetime's range (years 1..9999): ``-infinity``
    and BC instants become ``0001-01-01T00:00:00``, ``infinity`` and years > 9999 ``9999-12-31T23:59:59.999999``.
    The bool says it was clamped (what a context's DuckDB TIMESTAMP column stores; ``docs/contexts.md``)."""
    micros = instant_micros(text)
    if micros is None:
        micros = _MIN_MICROS if text == NEG_INFINITY else _MAX_MICROS
        return pg_micros_to_datetime(micros - _PG_EPOCH_MICROS), True
    clamped = min(max(micros, _MIN_MICROS), _MAX_MICROS)
    return pg_micros_to_datetime(clamped - _PG_EPOCH_MICROS), clamped != micros


def instant_day(text: str) -> str:
    """The UTC day (``YYYY-MM-DD``, expanded year outside 1..9999) of an instant text; ``±infinity`` itself."""
    micros = instant_micros(text)
    if micros is None:
        return text
    return format_micros(micros).split("T", 1)[0]
