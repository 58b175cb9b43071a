from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walduck.lsn import InvalidLSN, format_lsn, parse_lsn
from walduck.shardkey import LEGACY_SHARD, shard_for, shard_id
from walduck.timeutil import datetime_to_pg_micros, iso, parse_iso, pg_micros_to_datetime


def test_lsn_examples() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("0/0")) == "0/0"
    assert format_lsn((0x1 << 32) | 0xA) == "1/A"


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_roundtrip(value: int) -> None:
    assert parse_lsn(format_lsn(value)) == value


@pytest.mark.parametrize("bad", ["", "16", "16/", "/1", "G/1", "1/2/3", "123456789/0"])
def test_lsn_rejects(bad: str) -> None:
    with pytest.raises(InvalidLSN):
        parse_lsn(bad)


def test_shard_is_utc_day_of_start() -> None:
    # 23:30 at UTC-2 is already the next UTC day
    ts = datetime(2024, 1, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert shard_for(ts) == "2024-01-02"
    assert shard_for("2024-03-01T00:00:00+00:00") == "2024-03-01"
    assert shard_for(datetime(2024, 3, 1, 23, 59, 59)) == "2024-03-01"  # naive = UTC
    assert shard_for(None) == LEGACY_SHARD
    assert shard_id("ds-1", "2024-03-01") == "ds-1/2024-03-01"


def test_iso_has_offset_and_pg_epoch_roundtrip() -> None:
    ts = datetime(2026, 11, 22, 7, 40, 1, 123456, tzinfo=UTC)
    assert iso(ts) == "2026-11-22T07:40:01.123456+00:00"
    assert parse_iso(iso(ts)) == ts
    assert pg_micros_to_datetime(datetime_to_pg_micros(ts)) == ts
    assert datetime_to_pg_micros(datetime(2000, 1, 1, tzinfo=UTC)) == 0


@given(st.binary(min_size=0, max_size=40), st.integers(min_value=1, max_value=64))
def test_partition_of_is_kafkas_default_partitioner(key: bytes, partitions: int) -> None:
    """The one key -> partition rule agrees with aiokafka's own DefaultPartitioner (an independent twin)."""
    from aiokafka.partitioner import DefaultPartitioner

    from walduck.records import partition_of

    parts = list(range(partitions))
    assert partition_of(key, partitions) == DefaultPartitioner()(key, parts, parts)
