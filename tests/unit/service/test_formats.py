"""Byte-exact renderings against Timestore's examples (Timestore's SQL API contract and its e2e tests)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from sinks.service import formats

ROWS = [{"site": "alpha", "value": 42.5}, {"site": "beta", "value": 37.1}]


def test_csv_matches_timestore_example() -> None:
    assert formats.render_csv(["site", "value"], ROWS) == "site,value\nalpha,42.5\nbeta,37.1"


def test_csv_quoting_nulls_and_buffers() -> None:
    rows = [{"a": 'say "hi"', "b": None, "c": formats.normalize_value(b"\x01\xff"), "d": "x,y", "e": True}]
    assert (
        formats.render_csv(["a", "b", "c", "d", "e"], rows) == 'a,b,c,d,e\n"say ""hi""",,\\x01ff,"x,y",true'
    )


def test_csv_no_columns_is_empty() -> None:
    assert formats.render_csv([], []) == ""


def test_table_layout() -> None:
    text = formats.render_table(["site", "value"], [*ROWS, {"site": "gamma-long", "value": None}])
    assert text == (
        "site       | value\n"
        "-----------+------\n"
        "alpha      | 42.5 \n"
        "beta       | 37.1 \n"
        "gamma-long | NULL \n"
        "(3 rows)"
    )


def test_table_singular_and_empty() -> None:
    assert formats.render_table(["n"], [{"n": 1}]) == "n\n-\n1\n(1 row)"
    assert formats.render_table([], []) == "(0 rows)\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (42.5, "42.5"),
        (42.0, "42"),
        (-0.5, "-0.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (1.5e-7, "1.5e-7"),
        (123456789.125, "123456789.125"),
        (float("nan"), "NaN"),
    ],
)
def test_js_number(value: float, text: str) -> None:
    assert formats.js_number(value) == text


def test_normalize_like_node() -> None:
    ts = dt.datetime(2024, 1, 1, 0, 0, 0, 123456)
    assert formats.normalize_value(ts) == "2024-01-01T00:00:00.123Z"
    aware = dt.datetime(2024, 1, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert formats.normalize_value(aware) == "2024-01-01T00:00:00.000Z"
    assert formats.normalize_value(2**53 - 1) == 2**53 - 1
    assert formats.normalize_value(2**53) == str(2**53)
    assert formats.normalize_value(Decimal("1.25")) == 1.25
    assert formats.normalize_value({"k": [2**60]}) == {"k": [str(2**60)]}


def test_resolve_format() -> None:
    assert formats.resolve_format(None, formats.READ_FORMATS) == "json"
    assert formats.resolve_format(" CSV ", formats.READ_FORMATS) == "csv"
    with pytest.raises(formats.UnsupportedFormat) as info:
        formats.resolve_format("xml", formats.EXEC_FORMATS)
    assert info.value.message == 'Unsupported format "xml". Supported formats: json, csv, table'


def _exec(fmt: str, columns: list[str], rows: list[tuple]) -> bytes:
    writer = formats.ExecWriter(fmt, columns)
    return writer.begin() + b"".join(writer.row(r) for r in rows) + writer.end()


def test_exec_writers() -> None:
    rows = [("alpha", 42.5), ("beta", None)]
    assert (
        _exec("json", ["site", "value"], rows)
        == b'[{"site":"alpha","value":42.5},{"site":"beta","value":null}]'
    )
    assert _exec("csv", ["site", "value"], rows) == b"site,value\nalpha,42.5\nbeta,\n"
    assert (
        _exec("table", ["site", "value"], rows)
        == b"site\tvalue\n----\t-----\nalpha\t42.5\nbeta\tNULL\n(2 rows)\n"
    )
    assert _exec("table", ["n"], []) == b"n\n---\n(0 rows)\n"


def test_arrow_ipc_roundtrip() -> None:
    table = pa.table({"site": ["alpha"], "value": [42.5]})
    back = pa.ipc.open_stream(formats.arrow_ipc(table)).read_all()
    assert back.equals(table)
