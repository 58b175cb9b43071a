"""pgoutput v1 decoder against payloads captured from a real PostgreSQL 15 (fixtures/pgoutput_v1.json)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import orjson
import pytest

from connectors import pgoutput as po
from connectors import values
from connectors.errors import DecodeError

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "pgoutput_v1.json").read_text())
PAYLOADS = [bytes.fromhex(m["hex"]) for m in FIXTURE["messages"]]


def decoded() -> list[po.PgOutputMessage]:
    return [po.decode(p) for p in PAYLOADS]


def test_message_sequence_matches_what_postgres_sent() -> None:
    kinds = [type(m).__name__ for m in decoded()]
    assert kinds == [
        "Begin", "Relation", "Insert", "Commit",
        "Begin", "Relation", "Insert", "Insert", "Commit",
        "Begin", "Update", "Commit",
        "Begin", "Delete", "Commit",
        "Message",
        "Begin", "Relation", "Truncate", "Commit",
    ]  # fmt: skip


def test_begin_and_commit_agree() -> None:
    msgs = decoded()
    begin, commit = msgs[0], msgs[3]
    assert isinstance(begin, po.Begin) and isinstance(commit, po.Commit)
    assert begin.final_lsn == commit.commit_lsn
    assert commit.end_lsn > commit.commit_lsn
    assert begin.commit_ts == commit.commit_ts and begin.commit_ts.tzinfo is not None
    assert begin.xid == int(FIXTURE["messages"][0]["xid"])


def test_relation_columns_and_types() -> None:
    rel = decoded()[5]
    assert isinstance(rel, po.Relation)
    assert (rel.namespace, rel.name, rel.replica_identity) == ("cap", "dataset_partitions", "f")
    types = {c.name: c.type_oid for c in rel.columns}
    assert types == {
        "id": values.TEXT, "dataset_id": values.TEXT, "row_count": values.INT8, "version": values.INT4, "ratio": values.FLOAT8,
        "hot": values.BOOL, "tags": values.TEXT_ARRAY, "partition_key": values.JSONB, "start_time": values.TIMESTAMPTZ,
        "metadata": values.JSONB,
    }  # fmt: skip


def plain(row: dict) -> dict:
    """A typed row as it reads on the wire (JSON columns are ``orjson.Fragment`` inside the connector)."""
    return orjson.loads(orjson.dumps(row))


def test_typed_insert_row() -> None:
    msgs = decoded()
    cache = po.RelationCache()
    cache.add(msgs[5])
    ins = msgs[6]
    assert isinstance(ins, po.Insert)
    # JSON columns stay PostgreSQL's text (orjson.Fragment); compare what the record carries
    row = plain(cache.row(cache.get(ins.relation_oid), ins.new))
    assert row["row_count"] == 1000 and row["version"] == 3 and row["ratio"] == 0.25 and row["hot"] is True
    assert row["tags"] == ["a", "b c", None, 'd"e']
    assert row["partition_key"] == {"time": "2024-01-01"}
    # captured with TimeZone Asia/Kolkata: '2024-01-01 05:30:00.123456+05:30' is midnight UTC
    assert row["start_time"] == "2024-01-01T00:00:00.123456+00:00"
    assert len(row["metadata"]["blob"]) == 9600
    nulls = plain(cache.row(cache.get(ins.relation_oid), msgs[7].new))  # type: ignore[union-attr]
    assert nulls["row_count"] is None and nulls["tags"] is None and nulls["metadata"] == {}


def test_update_with_unchanged_toast_takes_old_value() -> None:
    msgs = decoded()
    cache = po.RelationCache()
    cache.add(msgs[5])
    upd = msgs[10]
    assert isinstance(upd, po.Update) and upd.old_kind == "O" and upd.old is not None
    assert upd.new[-1] is po.UNCHANGED  # the TOASTed jsonb was not re-sent
    rel = cache.get(upd.relation_oid)
    old = cache.row(rel, upd.old)
    new = plain(cache.row(rel, upd.new, fallback=old))
    old = plain(old)
    assert new["row_count"] == 2000 and old["row_count"] == 1000
    assert new["metadata"] == old["metadata"] and len(new["metadata"]["blob"]) == 9600
    with pytest.raises(DecodeError) as err:
        cache.row(rel, upd.new)
    assert err.value.reason == "unchanged toast without old value"


def test_delete_message_and_truncate() -> None:
    msgs = decoded()
    delete, message, trunc = msgs[13], msgs[15], msgs[18]
    assert isinstance(delete, po.Delete) and delete.old_kind == "O" and delete.old[0] == b"p-2"
    assert isinstance(message, po.Message)
    assert (message.transactional, message.prefix, message.content) == (
        False,
        "walduck.heartbeat",
        b"2024-01-01 00:00:00+00",
    )
    assert isinstance(trunc, po.Truncate) and trunc.relation_oids == (msgs[5].oid,)  # type: ignore[union-attr]


def test_truncated_and_unknown_messages_raise_decode_error() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        po.decode(PAYLOADS[2][:-3])
    with pytest.raises(DecodeError, match="unknown message type"):
        po.decode(b"Z\x00")
    with pytest.raises(DecodeError):
        po.decode(b"")
    bad_kind = b"I" + struct.pack("!i", 1) + b"N" + struct.pack("!h", 1) + b"x"
    with pytest.raises(DecodeError, match="unknown tuple data kind"):
        po.decode(bad_kind)


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (values.TIMESTAMPTZ, "2024-03-01 12:00:00+00", "2024-03-01T12:00:00+00:00"),
        (values.TIMESTAMPTZ, "2024-03-01 12:00:00-02:30", "2024-03-01T14:30:00+00:00"),
        (values.JSON, "[1, 2]", [1, 2]),
        (values.FLOAT8, "NaN", "nan"),
        (values.TEXT_ARRAY, "{}", []),
        (values.TEXT_ARRAY, '{"",NULL,"NULL"}', ["", None, "NULL"]),
        (values.TEXT_ARRAY, '{"a\\\\b"}', ["a\\b"]),
        (values.BOOL, "f", False),
        (1186, "1 day", "1 day"),  # unknown types stay text
    ],
)
def test_convert(oid: int, text: str, expected: object) -> None:
    value = values.convert(oid, text.encode())
    if isinstance(value, orjson.Fragment):
        value = orjson.loads(orjson.dumps(value))
    if expected == "nan":
        assert value != value
    else:
        assert value == expected


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("0044-03-15 00:00:00+00 BC", "-0043-03-15T00:00:00+00:00"),
    ],
)
def test_timestamps_without_iso_form_have_walducks_encoding(text: str, encoded: str) -> None:
    # issue 16, finding 3: valid catalog values, once sent to the DLQ ("has no ISO 8601 form")
    assert values.convert(values.TIMESTAMPTZ, text.encode()) == encoded


@pytest.mark.parametrize(
    "text", ["2024-13-01 00:00:00+01", "2023-02-29 00:00:00+01", "soon", "2024-01-01 00:00:00+0x"]
)
def test_bad_timestamps_raise(text: str) -> None:
    with pytest.raises(DecodeError) as err:
        values.convert(values.TIMESTAMPTZ, text.encode())
    assert err.value.reason == "bad timestamp"


def test_bad_values_raise_with_reason() -> None:
    with pytest.raises(DecodeError, match="bad json"):
        values.convert(values.JSONB, b"{nope")
    with pytest.raises(DecodeError, match="bad value"):
        values.convert(values.INT8, b"12x")
    with pytest.raises(DecodeError, match="bad utf-8"):
        values.convert(values.TEXT, b"\xff\xfe")
