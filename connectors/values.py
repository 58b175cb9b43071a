"""Column values: PostgreSQL's text output for one type OID -> the value a change record carries.

The one table of PostgreSQL types walduck knows (:data:`TYPES`); each entry says how its text becomes a value
three ways, one per consumer:

* ``text`` — the careful path (:func:`convert`): any refusal is a :class:`~connectors.errors.DecodeError`
  naming the problem (the row goes to the DLQ with that reason).
* ``fast`` — the hot path (:func:`row_converter`, used by :class:`connectors.pgoutput.RowPlan`): takes the raw
  bytes, mostly a C callable (no Python frame per value); any exception sends the row to the careful path.
  JSON stays PostgreSQL's own (valid) JSON text as an ``orjson.Fragment``, written into the record verbatim.
  The careful path does the same (every path, insert/update/delete/snapshot, carries the exact text).
* Timestamps become walduck's instant text (:func:`walduck.timeutil.pg_timestamp`): ISO 8601 UTC, plus
  ``infinity``/``-infinity``, expanded years above 9999 and astronomical (ISO 8601) years for BC.
* ``kind`` — how the compiled encoder (``connectors/_rowjson.pyx``) writes the value into the row's JSON
  (:class:`JsonKind` mirrors that file's enum; ``OTHER`` calls the Python ``fast`` converter).

Types not in the table stay text. Not here: message framing and TupleData (:mod:`connectors.pgoutput`), record
building (:mod:`connectors.transactions`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

from connectors.errors import DecodeError
from walduck.jsonexact import loads_exact
from walduck.timeutil import InstantError, pg_timestamp

BOOL, INT8, INT2, INT4, TEXT, OID = 16, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, VARCHAR, BPCHAR = 114, 700, 701, 1043, 1042
TIMESTAMP, TIMESTAMPTZ, NUMERIC, JSONB, TEXT_ARRAY, VARCHAR_ARRAY = 1114, 1184, 1700, 3802, 1009, 1015


def _timestamptz(text: str) -> str:
    # fast path: what the walsender prints with TimeZone=UTC and DateStyle ISO,
    # '2024-01-01 00:00:00[.5]+00' -> '2024-01-01T00:00:00[.500000]+00:00' (same as iso(datetime))
    if len(text) >= 22 and text[-3:] == "+00" and text[4] == "-" and text[10] == " " and text[13] == ":":
        clock = text[11:-3]
        if len(clock) == 8:
            return f"{text[:10]}T{clock}+00:00"
        if clock[8] == "." and 9 < len(clock) <= 15 and clock[9:].isdigit():
            return f"{text[:10]}T{clock[:8]}.{clock[9:]:0<6}+00:00"
    # everything else PostgreSQL prints (offsets, no offset = UTC, ±infinity, years > 9999, BC): walduck's
    # documented instant encoding (walduck/timeutil.py), exact for every valid timestamp
    try:
        return pg_timestamp(text)
    except InstantError as exc:
        raise DecodeError("bad timestamp", text[:80]) from exc


def _float(text: str) -> float:
    return float(text)  # 'NaN', 'Infinity', '-Infinity' parse too


def _bool(text: str) -> bool:
    if text not in ("t", "f"):
        raise DecodeError("bad boolean", text)
    return text == "t"


def _json(text: str) -> orjson.Fragment:
    # PostgreSQL's own JSON text, verbatim (as the hot path): parsing it into float64 would lose jsonb's exact
    # numerics (123456789012345678901234567890, 0.10000000000000000000001) or refuse them (1e400). Checked
    # with the exact loader so a refusal still names the problem.
    try:
        loads_exact(text)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("bad json", str(exc)[:200]) from exc
    return orjson.Fragment(text)


def parse_text_array(text: str) -> list[str | None]:
    """A one-dimensional PostgreSQL array literal of text (``{a,"b c",NULL}``)."""
    if not (text.startswith("{") and text.endswith("}")):
        raise DecodeError("bad array", text[:80])
    body = text[1:-1]
    items: list[str | None] = []
    if not body:
        return items
    i, n = 0, len(body)
    while i <= n:
        if i < n and body[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and body[i] != '"':
                if body[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(body[i])
                i += 1
            if i >= n:
                raise DecodeError("bad array", "unterminated quote")
            i += 1  # closing quote
            items.append("".join(chars))
        else:
            end = body.find(",", i)
            end = n if end < 0 else end
            token = body[i:end]
            if token.startswith("{"):
                raise DecodeError("bad array", "multi-dimensional arrays are not supported")
            items.append(None if token == "NULL" else token)
            i = end
        if i < n and body[i] != ",":
            raise DecodeError("bad array", f"unexpected {body[i]!r}")
        i += 1
    return items


_BOOLS = {b"t": True, b"f": False}


def _json_fragment(raw: bytes) -> orjson.Fragment:
    if not raw.isascii():
        raw.decode()  # UnicodeDecodeError: the row goes to the careful path (a Fragment is written as is)
    return orjson.Fragment(raw)


_TIMESTAMPS: dict[bytes, str] = {}
"""Recently converted timestamps: a transaction's rows share ``created_at`` and bucket-aligned times."""


def _timestamptz_bytes(raw: bytes) -> str:
    value = _TIMESTAMPS.get(raw)
    if value is None:
        value = _timestamptz(raw.decode())
        if len(_TIMESTAMPS) >= 4096:
            _TIMESTAMPS.clear()
        _TIMESTAMPS[raw] = value
    return value


class JsonKind(IntEnum):
    """How the compiled encoder writes a column (the numbers are ``connectors/_rowjson.pyx``'s enum)."""

    OTHER = 0
    TEXT = 1
    INT = 2
    BOOL = 3
    JSON = 4
    TIMESTAMP = 5


@dataclass(frozen=True, slots=True)
class ValueType:
    """One PostgreSQL type: its careful converter (text), its hot-path converter (bytes, ``None`` = decode the
    bytes then use ``text``) and its compiled-encoder kind."""

    text: Callable[[str], Any]
    fast: Callable[[bytes], Any] | None
    kind: JsonKind


_STRING = ValueType(str, bytes.decode, JsonKind.TEXT)
_INTEGER = ValueType(int, int, JsonKind.INT)
_FLOAT = ValueType(_float, float, JsonKind.OTHER)
_JSON = ValueType(_json, _json_fragment, JsonKind.JSON)
_TIMESTAMP = ValueType(_timestamptz, _timestamptz_bytes, JsonKind.TIMESTAMP)
_ARRAY = ValueType(parse_text_array, None, JsonKind.OTHER)
_UNKNOWN = ValueType(str, None, JsonKind.OTHER)

TYPES: dict[int, ValueType] = {
    TEXT: _STRING,
    VARCHAR: _STRING,
    BPCHAR: _STRING,
    INT2: _INTEGER,
    INT4: _INTEGER,
    INT8: _INTEGER,
    OID: _INTEGER,
    BOOL: ValueType(_bool, _BOOLS.__getitem__, JsonKind.BOOL),
    FLOAT4: _FLOAT,
    FLOAT8: _FLOAT,
    NUMERIC: ValueType(str, None, JsonKind.OTHER),  # exact; the catalog has none
    JSON: _JSON,
    JSONB: _JSON,
    TIMESTAMPTZ: _TIMESTAMP,
    TIMESTAMP: _TIMESTAMP,
    TEXT_ARRAY: _ARRAY,
    VARCHAR_ARRAY: _ARRAY,
}
"""Every type walduck converts; anything else stays text (:data:`_UNKNOWN`)."""


def convert(type_oid: int, raw: bytes) -> Any:
    """Text-format value -> Python value (unknown types stay text)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError("bad utf-8", str(exc)) from exc
    converter = TYPES.get(type_oid, _UNKNOWN).text
    try:
        return converter(text)
    except DecodeError:
        raise
    except ValueError as exc:
        raise DecodeError("bad value", f"type {type_oid}: {text[:80]!r}") from exc


def row_converter(type_oid: int) -> Callable[[bytes], Any]:
    """The hot-path converter of a column: raw text bytes -> value (any exception: take the careful path)."""
    value_type = TYPES.get(type_oid, _UNKNOWN)
    if value_type.fast is not None:
        return value_type.fast
    text = value_type.text
    return lambda raw: text(raw.decode())


def json_kind(type_oid: int) -> JsonKind:
    """How the compiled encoder writes a column of this type."""
    return TYPES.get(type_oid, _UNKNOWN).kind
