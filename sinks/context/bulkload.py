"""Visible partitions from PostgreSQL into the context in bulk: ``COPY … TO STDOUT (FORMAT csv)`` → Arrow's
CSV reader → one DuckDB ``INSERT … SELECT`` (issue 15). No Python work per row: the rows are parsed by Arrow
(C++), shards and file locations are joined in DuckDB from per-dataset and per-storage-target tables of a
few hundred rows. Used by rebuilds and full-scan applies (``read_catalog(..., bulk=True)``); the per-row
path (dicts, then ``_insert_partitions``) stays for deltas, whose partitions arrive as dicts anyway.

Equivalence with the per-row path (tested): the same columns and values, locations computed by the same rule
as :func:`walduck.locations.partition_location` (expressed per target as a prefix), missing start/end
times as ``FAR_PAST``/``FAR_FUTURE``. ``partition_key`` is PostgreSQL's jsonb text (``{"a": 1}``), the delta
path's is orjson's (``{"a":1}``): the same JSON, read as JSON everywhere.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from sinks.context import ddl
from sinks.context.ddl import INDEX_SCHEMA as WD
from walduck.attribution import SQL_EXPRESSION
from walduck.locations import partition_location

_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()),
    ("dataset_id", pa.string()),
    ("manifest_id", pa.string()),
    ("manifest_shard", pa.string()),
    ("storage_target_id", pa.string()),
    ("file_path", pa.string()),
    ("file_format", pa.string()),
    ("start_time", pa.timestamp("us")),
    ("end_time", pa.timestamp("us")),
    ("row_count", pa.int64()),
    ("file_size_bytes", pa.int64()),
    ("schema_version_id", pa.string()),
    ("table_name", pa.string()),
    ("partition_key", pa.string()),
]


def _clamped(column: str) -> str:
    return (
        f"(greatest(least({column}, '9999-12-31 23:59:59.999999+00'::timestamptz),"
        f" '0001-01-01 00:00:00+00'::timestamptz) AT TIME ZONE 'UTC')::text"
    )


def copy_partitions(
    cur: psycopg.Cursor[Any],
    schema: str,
    dataset_ids: list[str] | None,
    connect: Callable[[], psycopg.Connection[Any]] | None = None,
    connections: int = 1,
) -> pa.Table:
    """The visible partitions (published manifests), in the caller's transaction (its snapshot).

    A whole-catalog read (``dataset_ids`` None) with ``connections`` > 1 and a ``connect`` factory is split into
    that many block ranges of ``dataset_partitions`` (TID range scans), read at once: the caller's cursor reads
    the first, each other range is read by a new connection that imports the caller's snapshot
    (``pg_export_snapshot()`` → ``SET TRANSACTION SNAPSHOT``), so every range sees exactly the same rows. The
    PostgreSQL backends format CSV while Arrow parses the ranges already received (both release the GIL).
    """
    if dataset_ids is not None or connect is None or connections <= 1:
        return _read(cur, _query(schema, dataset_ids, None))
    conn = cur.connection
    snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
    blocks = conn.execute(
        sql.SQL(
            "SELECT pg_relation_size(format('%I.%I', {}::text, 'dataset_partitions')::regclass)"
            " / current_setting('block_size')::int"
        ).format(sql.Literal(schema))
    ).fetchone()[0]  # type: ignore[index]
    ranges = block_ranges(int(blocks), connections)
    with ThreadPoolExecutor(len(ranges) - 1, thread_name_prefix="catalog-copy") as pool:
        others = [
            pool.submit(_read_in_snapshot, connect, snapshot, _query(schema, None, r)) for r in ranges[1:]
        ]
        tables = [_read(cur, _query(schema, None, ranges[0]))]
        tables += [f.result() for f in others]
    return pa.concat_tables(tables)


def block_ranges(blocks: int, parts: int) -> list[tuple[int, int | None]]:
    """``parts`` contiguous block ranges ``[lo, hi)`` covering a relation of ``blocks`` blocks; the last range is
    open (``hi`` None), so blocks the relation gained after its size was read are covered too."""
    parts = max(1, parts)
    edges = [blocks * i // parts for i in range(parts)]
    return [(edges[i], edges[i + 1] if i + 1 < parts else None) for i in range(parts)]


def _query(schema: str, dataset_ids: list[str] | None, blocks: tuple[int, int | None] | None) -> sql.Composed:
    s = sql.Identifier(schema)
    only = (
        sql.SQL(" AND p.dataset_id = ANY({})").format(sql.Literal(list(dataset_ids)))
        if dataset_ids is not None
        else sql.SQL("")
    )
    if blocks is not None:
        lo, hi = blocks
        only += sql.SQL(" AND p.ctid >= {}::tid").format(sql.Literal(f"({lo},0)"))
        if hi is not None:
            only += sql.SQL(" AND p.ctid < {}::tid").format(sql.Literal(f"({hi},0)"))
    return (
        sql.SQL(
            "COPY (SELECT p.id, p.dataset_id, p.manifest_id, p.manifest_shard, p.storage_target_id, p.file_path,"
            # instants a context's TIMESTAMP cannot hold (±infinity, BC, years > 9999) are clamped as the delta
            # path clamps them (docs/contexts.md "Values"); pyarrow's ISO 8601 parser refuses them otherwise
            f" p.file_format, {_clamped('p.start_time')}, {_clamped('p.end_time')},"
            " p.row_count, p.file_size_bytes,"
            f" {SQL_EXPRESSION},"
            " coalesce(p.metadata->>'tableName', 'records'), p.partition_key::text"
            " FROM {s}.dataset_partitions p JOIN {s}.dataset_manifests m"
            " ON m.id = p.manifest_id AND m.status = 'published' WHERE true"
        ).format(s=s)
        + only
        + sql.SQL(") TO STDOUT (FORMAT csv)")
    )


def _read_in_snapshot(
    connect: Callable[[], psycopg.Connection[Any]], snapshot: str, query: sql.Composed
) -> pa.Table:
    """``query`` on a new connection inside the exported ``snapshot`` (REPEATABLE READ, read only)."""
    with connect() as conn:
        conn.autocommit = True
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            cur.execute("SET LOCAL DateStyle = ISO")
            return _read(cur, query)


def _read(cur: psycopg.Cursor[Any], query: sql.Composed) -> pa.Table:
    buf = io.BytesIO()
    with cur.copy(query) as copy:
        for chunk in copy:
            buf.write(chunk)
    if buf.tell() == 0:
        return pa.table({name: pa.array([], typ) for name, typ in _COLUMNS})
    buf.seek(0)
    return pacsv.read_csv(
        buf,
        read_options=pacsv.ReadOptions(column_names=[n for n, _ in _COLUMNS], block_size=1 << 24),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(_COLUMNS),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # COPY writes NULL as nothing and '' as ""
            timestamp_parsers=[pacsv.ISO8601],
        ),
    )


def insert_partitions(
    cur: duckdb.DuckDBPyConnection,
    table: pa.Table,
    shard_of: Callable[[str], int],
    targets: dict[str, dict[str, Any]],
    storage_root: str,
    far_past: datetime,
    far_future: datetime,
) -> None:
    """One INSERT … SELECT of ``table`` into ``wd.partitions``: shard per dataset, location per target."""
    if table.num_rows == 0:
        return
    dataset_ids = [d for d in pc.unique(table["dataset_id"]).to_pylist() if d is not None]
    shards = pa.table(
        {
            "dataset_id": pa.array(dataset_ids, pa.string()),
            "shard": pa.array([shard_of(d) for d in dataset_ids], pa.int32()),
        }
    )
    # a target's location rule as a prefix (partition_location of an empty relative path); '' = unknown target
    prefixes = pa.table(
        {
            "target_id": pa.array(["", *targets], pa.string()),
            "prefix": pa.array(
                [partition_location(None, "", storage_root)]
                + [partition_location(t, "", storage_root) for t in targets.values()],
                pa.string(),
            ),
        }
    )
    cur.register("__wd_bulk", table)
    cur.register("__wd_bulk_shards", shards)
    cur.register("__wd_bulk_prefixes", prefixes)
    try:
        names = ", ".join(ddl.PARTITION_COLUMNS)
        cur.execute(
            f"""
            INSERT INTO {WD}.partitions ({names})
            SELECT p.id, p.dataset_id, s.shard, p.manifest_id, p.manifest_shard, p.storage_target_id, p.file_path,
                CASE WHEN p.file_path LIKE 's3://%' OR p.file_path LIKE 'gs://%' OR p.file_path LIKE 'azure://%'
                          OR p.file_path LIKE '/%' THEN p.file_path
                     ELSE coalesce(t.prefix, d.prefix) || ltrim(p.file_path, '/') END,
                coalesce(p.file_format, 'parquet'), coalesce(p.start_time, ?), coalesce(p.end_time, ?),
                p.row_count, p.file_size_bytes, p.schema_version_id, coalesce(p.table_name, 'records'),
                coalesce(p.partition_key, '{{}}')
            FROM __wd_bulk p
            JOIN __wd_bulk_shards s ON s.dataset_id = p.dataset_id
            LEFT JOIN __wd_bulk_prefixes t ON t.target_id = p.storage_target_id
            CROSS JOIN (SELECT prefix FROM __wd_bulk_prefixes WHERE target_id = '') d
            """,
            [far_past, far_future],
        )
    finally:
        for name in ("__wd_bulk", "__wd_bulk_shards", "__wd_bulk_prefixes"):
            cur.unregister(name)
