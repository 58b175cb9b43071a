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
        assert fast == careful, oid
