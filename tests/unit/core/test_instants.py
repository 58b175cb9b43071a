"""walduck's instant encoding (walduck/timeutil.py): every PostgreSQL timestamp round-trips exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from walduck import timeutil as tu
from walduck.shardkey import shard_for

# PostgreSQL's range: 4713 BC .. 294276 AD, in microseconds since 1970
_LO = tu.instant_micros("-4712-01-01T00:00:00+00:00")
_HI = tu.instant_micros("+294276-12-31T23:59:59.999999+00:00")


@given(st.integers(min_value=_LO, max_value=_HI))
def test_format_and_parse_round_trip_over_postgres_range(micros: int) -> None:
    text = tu.format_micros(micros)
    assert tu.instant_micros(text) == micros


@given(st.datetimes(timezones=st.just(UTC)))
def test_years_1_to_9999_are_plain_iso(ts: datetime) -> None:
    assert tu.format_micros(tu.datetime_to_micros(ts)) == tu.iso(ts)


@given(st.integers(min_value=_LO, max_value=_HI), st.integers(min_value=-15 * 60, max_value=15 * 60))
def test_postgres_text_with_any_offset_means_the_same_instant(micros: int, offset_min: int) -> None:
    # render as PostgreSQL would with a session time zone of that offset
    local = tu.format_micros(micros + offset_min * 60_000_000)
    day, clock = local[: local.index("T")], local[local.index("T") + 1 : -6]
    year, rest = day.rsplit("-", 2)[0], "-".join(day.rsplit("-", 2)[1:])
    y = int(year)
    bc = " BC" if y <= 0 else ""
    sign = "+" if offset_min >= 0 else "-"
    off = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    pg = f"{(y if y > 0 else 1 - y):04d}-{rest} {clock}{off}{bc}"
    assert tu.pg_timestamp(pg) == tu.format_micros(micros)


def test_clamped_for_the_context() -> None:
    assert tu.parse_instant_clamped("infinity") == (datetime(9999, 12, 31, 23, 59, 59, 999999, UTC), True)
    assert tu.parse_instant_clamped("-infinity") == (datetime(1, 1, 1, tzinfo=UTC), True)
    assert tu.parse_instant_clamped("+10000-01-01T00:00:00+00:00")[1]
    assert tu.parse_instant_clamped("0000-12-31T23:30:00+00:00") == (datetime(1, 1, 1, tzinfo=UTC), True)
    ts = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(microseconds=5)
    assert tu.parse_instant_clamped(tu.iso(ts)) == (ts, False)


def test_shard_of_any_instant() -> None:
    assert shard_for("2024-01-01T23:00:00+00:00") == "2024-01-01"
    assert shard_for("+10000-01-01T00:00:00+00:00") == "+10000-01-01"
    assert shard_for("0000-12-31T23:30:00+00:00") == "0000-12-31"
    assert shard_for("infinity") == "infinity"


def test_bc_instants_agree_with_postgres_epoch() -> None:
    # extract(epoch FROM …) in PostgreSQL 15; the differential test against wal2json found walduck a day off
    # for BC years before this was pinned
    cases = {
        "4713-01-01 00:00:00+00 BC": -210_863_520_000,
        "0044-03-15 12:00:00+00 BC": -63_517_780_800,
        "0001-01-01 00:30:00+01": -62_135_598_600,
        "10000-01-01 00:00:00+00": 253_402_300_800,
        "0001-01-01 00:00:00+00": -62_135_596_800,
    }
    for text, epoch in cases.items():
        assert tu.instant_micros(tu.pg_timestamp(text)) == epoch * 1_000_000, text
