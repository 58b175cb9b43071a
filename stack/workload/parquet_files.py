"""Real Parquet partition files (pyarrow): schema mapping, synthetic rows, writing and merging."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ARROW_TYPES: dict[str, pa.DataType] = {
    "timestamp": pa.timestamp("us", tz="UTC"),
    "string": pa.string(),
    "double": pa.float64(),
    "integer": pa.int64(),
    "boolean": pa.bool_(),
}

SITES = ("alpha", "beta", "gamma", "delta", "epsilon")


@dataclass(slots=True, frozen=True)
class WrittenFile:
    path: Path
    row_count: int
    file_size_bytes: int
    checksum: str
    row_hash: str
    column_statistics: dict[str, Any]


def arrow_schema(fields: list[dict[str, Any]]) -> pa.Schema:
    return pa.schema([pa.field(f["name"], ARROW_TYPES[f["type"]]) for f in fields])


def _column(field: dict[str, Any], n: int, start: datetime, end: datetime, rng: random.Random) -> list[Any]:
    name, kind = field["name"], field["type"]
    if kind == "timestamp":
        span = max(0, int((end - start).total_seconds() * 1_000_000))
        return sorted(start + timedelta(microseconds=rng.randint(0, span)) for _ in range(n))
    if kind == "string":
        if name == "site":
            return [rng.choice(SITES) for _ in range(n)]
        return [f"{name}-{rng.randint(0, 999)}" for _ in range(n)]
    if kind == "double":
        return [round(rng.uniform(-50.0, 150.0), 3) for _ in range(n)]
    if kind == "integer":
        return [rng.randint(0, 10_000) for _ in range(n)]
    if kind == "boolean":
        return [rng.random() < 0.5 for _ in range(n)]
    raise ValueError(f"unsupported field type {kind!r}")


def synthetic_table(
    fields: list[dict[str, Any]], rows: int, start: datetime, end: datetime, rng: random.Random
) -> pa.Table:
    """``rows`` rows of the given schema; every timestamp column lies in ``[start, end]``."""
    columns = {f["name"]: _column(f, rows, start, end, rng) for f in fields}
    return pa.table(columns, schema=arrow_schema(fields))


def column_statistics(table: pa.Table, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """Timestore-shaped ``column_statistics`` (type, rowCount, nullCount, min, max)."""
    stats: dict[str, Any] = {}
    for f in fields:
        if f["name"] not in table.column_names:
            continue
        col = table.column(f["name"])
        entry: dict[str, Any] = {"type": f["type"], "rowCount": len(col), "nullCount": col.null_count}
        if f["type"] in ("timestamp", "double", "integer", "string") and len(col) > col.null_count:
            mm = pc.min_max(col).as_py()
            lo, hi = mm["min"], mm["max"]
            if isinstance(lo, datetime):
                lo, hi = lo.isoformat(), hi.isoformat()
            entry["min"], entry["max"] = lo, hi
        stats[f["name"]] = entry
    return stats


def write_table(
    table: pa.Table, path: Path, fields: list[dict[str, Any]], row_hash: bool = True
) -> WrittenFile:
    """Write ``table`` to ``path`` (parents created, atomic rename) and describe the file.

    ``row_hash=False`` skips the hash of the rows (``WrittenFile.row_hash`` is then empty): only ingestion
    signatures use it, and it costs more than writing the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="snappy")
    tmp.replace(path)
    data = path.read_bytes()
    rows_digest = hashlib.sha256(repr(table.to_pydict()).encode()).hexdigest() if row_hash else ""
    return WrittenFile(
        path=path,
        row_count=table.num_rows,
        file_size_bytes=len(data),
        checksum=hashlib.sha256(data).hexdigest(),
        row_hash=rows_digest,
        column_statistics=column_statistics(table, fields),
    )


def merge_files(sources: list[Path], fields: list[dict[str, Any]]) -> pa.Table:
    """Concatenate source files under ``fields`` (columns missing from older files become nulls)."""
    schema = arrow_schema(fields)
    tables = []
    for src in sources:
        t = pq.read_table(src)
        cols = [
            t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
            for f in schema
        ]
        tables.append(pa.Table.from_arrays(cols, schema=schema))
    merged = pa.concat_tables(tables)
    ts = next((f["name"] for f in fields if f["type"] == "timestamp"), None)
    return merged.sort_by(ts) if ts else merged
