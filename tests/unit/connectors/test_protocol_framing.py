"""Walsender CopyData framing: XLogData, keepalive, standby status update."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from connectors.protocol import Keepalive, ProtocolError, XLogData, encode_standby_status, parse_copy_data
from walduck.timeutil import datetime_to_pg_micros


def test_xlogdata() -> None:
    raw = b"w" + struct.pack("!QQq", 0x1_0000_0010, 0x1_0000_0100, 12345) + b"B\x00payload"
    msg = parse_copy_data(raw)
    assert msg == XLogData(
        start_lsn=0x1_0000_0010, wal_end=0x1_0000_0100, server_clock=12345, payload=b"B\x00payload"
    )


@pytest.mark.parametrize("reply", [0, 1])
def test_keepalive(reply: int) -> None:
    msg = parse_copy_data(b"k" + struct.pack("!Qq", 0x2A, 99) + bytes([reply]))
    assert msg == Keepalive(wal_end=0x2A, server_clock=99, reply_requested=bool(reply))


def test_standby_status_layout() -> None:
    clock = datetime_to_pg_micros(datetime(2024, 1, 1, tzinfo=UTC))
    raw = encode_standby_status(10, 20, 30, clock=clock, reply=True)
    assert len(raw) == 34
    tag, write, flush, apply, sent, reply = struct.unpack("!cQQQqB", raw)
    assert (tag, write, flush, apply, sent, reply) == (b"r", 10, 20, 30, clock, 1)
    assert clock == 757_382_400 * 1_000_000  # 24 years of seconds since 2000-01-01


def test_standby_status_default_clock_is_now() -> None:
    before = datetime_to_pg_micros(datetime.now(UTC))
    sent = struct.unpack("!cQQQqB", encode_standby_status(1, 1, 1))[4]
    assert before <= sent <= before + 5_000_000


@pytest.mark.parametrize("raw", [b"", b"w\x00\x01", b"k" + b"\x00" * 5, b"x" + b"\x00" * 20])
def test_malformed_frames(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_copy_data(raw)
