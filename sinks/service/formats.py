"""Byte-exact renderings of Timestore's SQL results (Timestore's SQL HTTP API contract).

Values are first normalised the way Timestore's Node runtime did (timestamps -> ``toISOString()``,
BIGINT -> number when it is a safe integer else a string, nested values recursed), then rendered:

* ``/sql/read`` json envelope, csv (header + rows joined by ``\\n``, no trailing newline), table
  (``a | b`` header, ``-`` runs joined by ``-+-``, padded rows, ``(N row[s])``), arrow (IPC stream);
* ``/sql/exec`` streamed bare json array, csv (every line ends ``\\n``), tab-separated table.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from walduck.errors import WalduckError

READ_FORMATS = ("json", "csv", "table", "arrow")
EXEC_FORMATS = ("json", "csv", "table")
MAX_SAFE_INTEGER = 2**53 - 1
CONTENT_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "table": "text/plain; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
}


class UnsupportedFormat(WalduckError):
    def __init__(self, requested: str, supported: Sequence[str]) -> None:
        self.message = f'Unsupported format "{requested}". Supported formats: {", ".join(supported)}'
        super().__init__(self.message)


def resolve_format(value: str | None, supported: Sequence[str]) -> str:
    cleaned = (value or "").strip().lower()
    if not cleaned:
        return "json"
    if cleaned in supported:
        return cleaned
    raise UnsupportedFormat(value or "", supported)


# --- JavaScript value semantics ----------------------------------------------------------------


class JsBuffer(bytes):
    """A BLOB value: csv/table render it as ``\\x<hex>`` like a Node Buffer."""


def js_number(value: float) -> str:
    """``String(n)`` of ECMAScript for a double (shortest round-trip digits, JS exponent rules)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits_tuple = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in digits_tuple.digits)
    k = len(digits)
    n = digits_tuple.exponent + k  # type: ignore[operator]
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exponent = n - 1
    exp_text = f"e+{exponent}" if exponent >= 0 else f"e-{-exponent}"
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return sign + mantissa + exp_text


def iso_millis(value: dt.datetime) -> str:
    """``Date.prototype.toISOString()``: UTC, millisecond precision, ``Z``."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def normalize_value(value: Any) -> Any:
    """A DuckDB/Python value -> what Timestore put into its JSON rows."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dt.datetime):
        return iso_millis(value)
    if isinstance(value, dt.date):
        return iso_millis(dt.datetime(value.year, value.month, value.day))
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return JsBuffer(bytes(value))
    if isinstance(value, dict):
        return {str(k): normalize_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalize_value(v) for v in value]
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, JsBuffer):
        return {"type": "Buffer", "data": list(value)}
    raise TypeError(type(value).__name__)


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default)


def format_cell(value: Any) -> str:
    """Timestore's ``formatCell`` over a normalised value."""
    if value is None:
        return ""
    if isinstance(value, JsBuffer):
        return "\\x" + value.hex()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return js_number(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict | list):
        return json_bytes(value).decode()
    if isinstance(value, dt.datetime):
        return iso_millis(value)
    return str(value)


def format_table_cell(value: Any) -> str:
    return "NULL" if value is None else format_cell(value)


def escape_csv(text: str) -> str:
    if any(ch in text for ch in ('"', ",", "\n", "\r")):
        return '"' + text.replace('"', '""') + '"'
    return text


# --- /sql/read ---------------------------------------------------------------------------------


def render_csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    if not columns:
        return ""
    lines = [",".join(escape_csv(name) for name in columns)]
    lines.extend(",".join(escape_csv(format_cell(row.get(name))) for name in columns) for row in rows)
    return "\n".join(lines)


def _rows_label(count: int) -> str:
    return f"({count} row{'' if count == 1 else 's'})"


def render_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    if not columns:
        return "(0 rows)\n"
    cells = [[format_table_cell(row.get(name)) for name in columns] for row in rows]
    widths = [max([len(name), *(len(r[i]) for r in cells)]) for i, name in enumerate(columns)]
    header = " | ".join(name.ljust(widths[i]) for i, name in enumerate(columns))
    separator = "-+-".join("-" * max(w, 1) for w in widths)
    body = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)) for r in cells]
    return "\n".join([header, separator, *body, _rows_label(len(rows))])


def arrow_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def json_rows_within(rows: Sequence[dict[str, Any]], budget: int) -> tuple[bytes, int]:
    """The JSON array of the longest prefix of ``rows`` that fits ``budget`` bytes, and its length."""
    pieces: list[bytes] = []
    size = 2
    for row in rows:
        piece = json_bytes(row)
        size += len(piece) + (1 if pieces else 0)
        if size > budget:
            break
        pieces.append(piece)
    return b"[" + b",".join(pieces) + b"]", len(pieces)


def csv_rows_within(columns: Sequence[str], rows: Sequence[dict[str, Any]], budget: int) -> int:
    """How many leading ``rows`` the csv body can hold within ``budget`` bytes."""
    if not columns:
        return len(rows)
    size = len(",".join(escape_csv(name) for name in columns).encode())
    for i, row in enumerate(rows):
        line = ",".join(escape_csv(format_cell(row.get(name))) for name in columns)
        size += 1 + len(line.encode())
        if size > budget:
            return i
    return len(rows)


def table_rows_within(columns: Sequence[str], rows: Sequence[dict[str, Any]], budget: int) -> int:
    """How many leading ``rows`` the table body can hold within ``budget`` bytes.

    Every line is padded to the widest cell of each column, so one wide cell widens every line: the bound
    is (lines) x (widest line), per column the widest cell in characters plus the most bytes a cell
    needs beyond its characters (UTF-8).
    """
    if not columns:
        return len(rows)
    widths = [len(name) for name in columns]
    extra = [len(name.encode()) - len(name) for name in columns]
    gaps = 3 * (len(columns) - 1)
    for i, row in enumerate(rows):
        for c, name in enumerate(columns):
            cell = format_table_cell(row.get(name))
            widths[c] = max(widths[c], len(cell))
            extra[c] = max(extra[c], len(cell.encode()) - len(cell))
        line = sum(widths) + sum(extra) + gaps + 1
        count = i + 1
        if (count + 2) * line + len(_rows_label(count)) > budget:
            return i
    return len(rows)


def arrow_within(table: pa.Table, budget: int) -> tuple[bytes, int]:
    """The Arrow IPC stream of the longest prefix of ``table`` found to fit ``budget`` bytes."""
    rows = table.num_rows
    data = arrow_ipc(table)
    while len(data) > budget and rows > 0:
        shrunk = int(rows * budget / len(data) * 0.95)
        rows = shrunk if shrunk < rows else rows - 1
        data = arrow_ipc(table.slice(0, rows))
    return data, rows


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Arrow rows -> normalised dicts (duplicate column names: the last one wins, as in JS)."""
    names = table.column_names
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [
        {names[c]: normalize_value(columns[c][r]) for c in range(len(names))} for r in range(table.num_rows)
    ]


# --- /sql/exec (streamed, PostgreSQL rows) -----------------------------------------------------


class ExecWriter:
    """Timestore's streaming writers: json ``[...]``, csv lines ending ``\\n``, tab-separated table."""

    def __init__(self, fmt: str, columns: Sequence[str]) -> None:
        self.fmt = fmt
        self.columns = list(columns)
        self.count = 0

    def begin(self) -> bytes:
        if self.fmt == "json":
            return b"["
        if not self.columns:
            return b""
        if self.fmt == "csv":
            return (",".join(escape_csv(c) for c in self.columns) + "\n").encode()
        header = "\t".join(self.columns)
        separator = "\t".join("-" * max(len(c), 3) for c in self.columns)
        return f"{header}\n{separator}\n".encode()

    def row(self, values: Sequence[Any]) -> bytes:
        normalized = [normalize_value(v) for v in values]
        first = self.count == 0
        self.count += 1
        if self.fmt == "json":
            record = dict(zip(self.columns, normalized, strict=False))
            return (b"" if first else b",") + json_bytes(record)
        if self.fmt == "csv":
            return (",".join(escape_csv(format_cell(v)) for v in normalized) + "\n").encode()
        return ("\t".join(format_table_cell(v) for v in normalized) + "\n").encode()

    def end(self) -> bytes:
        if self.fmt == "json":
            return b"]"
        if self.fmt == "csv":
            return b""
        return (_rows_label(self.count) + "\n").encode()
