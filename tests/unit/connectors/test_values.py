"""One table of PostgreSQL types (issue 14, item 9): connectors/values.py is the only place that knows type OIDs,
and its compiled-encoder kinds are the numbers connectors/_rowjson.pyx uses."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from connectors import values

CONNECTORS = Path(values.__file__).resolve().parent


def test_json_kinds_mirror_the_native_encoder_enum() -> None:
    pyx = (CONNECTORS / "_rowjson.pyx").read_text()
    native = {name: int(num) for name, num in re.findall(r"^\s+K_(\w+) = (\d+)$", pyx, re.M)}
    assert native == {"OTHER": 0, "TEXT": 1, "INT": 2, "BOOL": 3, "JSON": 4, "TS": 5}
    ours = {kind.name: int(kind) for kind in values.JsonKind}
    assert ours == {("TIMESTAMP" if k == "TS" else k): v for k, v in native.items()}


def test_no_other_connector_module_holds_a_type_oid_table() -> None:
    oids = {values.JSONB, values.TIMESTAMPTZ, values.TEXT_ARRAY, values.VARCHAR_ARRAY, values.NUMERIC}
    pattern = re.compile(r"\b(" + "|".join(str(o) for o in sorted(oids)) + r")\b")
    holders = [
        path.name
        for path in sorted(CONNECTORS.glob("*.py*"))
        if path.suffix in (".py", ".pyx") and path.name != "values.py" and pattern.search(path.read_text())
    ]
    assert holders == []


def test_every_known_type_has_a_hot_path_that_agrees_with_the_careful_path() -> None:
    samples = {
        values.TEXT: b"a b",
        values.INT8: b"-42",
        values.BOOL: b"t",
        values.FLOAT8: b"1.5",
        values.NUMERIC: b"1.50",
        values.JSONB: b'{"a": [1, 2]}',
        values.TIMESTAMPTZ: b"2024-03-01 12:00:00.5+00",
        values.TEXT_ARRAY: b'{a,"b c",NULL}',
    }
    for oid, raw in samples.items():
        fast = values.row_converter(oid)(raw)
        careful = values.convert(oid, raw)
        if isinstance(fast, orjson.Fragment):
            fast = orjson.loads(orjson.dumps(fast))
        if isinstance(careful, orjson.Fragment):
            careful = orjson.loads(orjson.dumps(careful))
        assert fast == careful, oid


# issue 16, finding 1 and 2: jsonb numbers are exact on every path (the careful path is what UPDATE, DELETE and
# the snapshot use; the INSERT hot path already copied the text)
EXACT_JSON = (
    b'{"big": 123456789012345678901234567890, "pi": 3.141592653589793238462643383279502884197,'
    b' "cents": 0.10000000000000000000001, "u64over": 18446744073709551616, "huge": 1e400}'
)


def test_careful_and_hot_path_carry_jsonb_text_verbatim() -> None:
    for oid in (values.JSONB, values.JSON):
        careful = values.convert(oid, EXACT_JSON)
        fast = values.row_converter(oid)(EXACT_JSON)
        assert orjson.dumps({"c": careful}) == b'{"c":' + EXACT_JSON + b"}"
        assert orjson.dumps({"c": fast}) == orjson.dumps({"c": careful})


def test_exact_numbers_survive_a_change_record_round_trip() -> None:
    from decimal import Decimal

    from walduck.records import ChangeRecord, Kind, Op, Source

    rec = ChangeRecord(
        Kind.CHANGE,
        Source.STREAM,
        1,
        1,
        "2024-01-01T00:00:00+00:00",
        "dataset_partitions",
        Op.UPDATE,
        {"id": "p"},
        {"id": "p", "column_statistics": values.convert(values.JSONB, EXACT_JSON)},
        {"id": "p", "column_statistics": values.convert(values.JSONB, EXACT_JSON)},
    )
    back = ChangeRecord.from_bytes(rec.to_bytes())
    stats = back.new["column_statistics"]
    assert stats["big"] == 123456789012345678901234567890
    assert stats["pi"] == Decimal("3.141592653589793238462643383279502884197")
    assert stats["cents"] == Decimal("0.10000000000000000000001")
    assert stats["u64over"] == 18446744073709551616
    assert stats["huge"] == Decimal("1e400")
    # and written again (a delta, the DLQ) without loss
    assert ChangeRecord.from_bytes(back.to_bytes()).old == back.old


def test_bad_json_is_still_refused_by_the_careful_path() -> None:
    import pytest

    from connectors.errors import DecodeError

    with pytest.raises(DecodeError, match="bad json"):
        values.convert(values.JSONB, b'{"a": ')


# issue 16, finding 3: timestamps with no ISO 8601 basic form have walduck's documented encoding
PG_TIMESTAMPS = {
    b"infinity": "infinity",
    b"-infinity": "-infinity",
    b"10000-01-01 00:00:00+00": "+10000-01-01T00:00:00+00:00",
    b"294276-12-31 23:59:59.999999+00": "+294276-12-31T23:59:59.999999+00:00",
    b"0001-12-31 23:30:00+00 BC": "0000-12-31T23:30:00+00:00",  # '0001-01-01 00:30:00+01'
    b"4713-01-01 00:00:00+00 BC": "-4712-01-01T00:00:00+00:00",
    b"0001-01-01 00:30:00+01": "0000-12-31T23:30:00+00:00",
    b"2024-03-01 12:00:00.5+05:30": "2024-03-01T06:30:00.500000+00:00",
    b"2024-03-01 12:00:00": "2024-03-01T12:00:00+00:00",
}


def test_timestamps_outside_iso_8601_are_encoded_not_refused() -> None:
    for oid in (values.TIMESTAMPTZ, values.TIMESTAMP):
        for raw, want in PG_TIMESTAMPS.items():
            assert values.convert(oid, raw) == want, raw
            assert values.row_converter(oid)(raw) == want, raw
