"""The catalog read straight from PostgreSQL (rebuilds, full-scan mode, verify).

One function, :func:`read_catalog`, so it can be swapped for ``walduck.catalog_reader`` once that
module exists. Rows come out in the delta shapes (``walduck/deltas.py``), times as ISO 8601 UTC.
Visible partitions = partitions of the published manifest of their (dataset, shard).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from walduck.attribution import SQL_EXPRESSION
from walduck.jsonexact import dumps_exact
from walduck.lsn import parse_lsn
from walduck.pgvalues import exact_loaders
from walduck.timeutil import iso


@dataclass(slots=True)
class CatalogSnapshot:
    lsn: int
    datasets: list[dict[str, Any]] = field(default_factory=list)
    schema_versions: list[dict[str, Any]] = field(default_factory=list)
    storage_targets: list[dict[str, Any]] = field(default_factory=list)
    partitions: list[dict[str, Any]] = field(default_factory=list)
    # read_catalog(bulk=True): the partitions as one Arrow table instead (sinks/context/bulkload.py)
    partitions_table: Any = None


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


def read_catalog(
    conn: psycopg.Connection,
    schema: str = "timestore",
    dataset_ids: list[str] | None = None,
    bulk: bool = False,
    connect: Callable[[], psycopg.Connection[Any]] | None = None,
    connections: int = 1,
) -> CatalogSnapshot:
    """Datasets, schema versions, storage targets and visible partitions in one consistent snapshot.

    ``dataset_ids`` None = everything. ``bulk``: partitions as one Arrow table (``partitions_table``,
    COPY → Arrow, see ``sinks/context/bulkload.py``) instead of dicts; with a ``connect`` factory and
    ``connections`` > 1 a whole-catalog bulk read is split over that many connections sharing this snapshot. ``lsn`` is ``pg_current_wal_lsn()`` read in its own statement
    BEFORE the REPEATABLE READ snapshot is taken: a lower bound. Every commit whose WAL record lies above
    it may or may not be in the snapshot; every commit the caller saw applied before calling is in it.
    (Read inside the snapshot's transaction the value would be an upper bound instead: a commit between
    the snapshot and the read has a smaller LSN and is invisible, the gap a rebuild must never skip.)
    """
    s = sql.Identifier(schema)
    only = dataset_ids is not None
    ds_filter = sql.SQL(" WHERE id = ANY(%(ids)s)") if only else sql.SQL("")
    sv_filter = sql.SQL(" WHERE dataset_id = ANY(%(ids)s)") if only else sql.SQL("")
    p_filter = sql.SQL(" AND p.dataset_id = ANY(%(ids)s)") if only else sql.SQL("")
    params = {"ids": list(dataset_ids or [])}
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()::text")
        lsn = parse_lsn(cur.fetchone()[0])  # type: ignore[index]
    if not conn.autocommit:
        conn.commit()  # the snapshot below must be a new transaction, taken after the LSN read
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        exact_loaders(cur)  # jsonb exact, timestamps as the change records carry them
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SET LOCAL DateStyle = ISO")
        cur.execute(
            sql.SQL(
                "SELECT id, slug, name, description, status, write_format, default_storage_target_id,"
                " metadata, created_at, updated_at FROM {}.datasets"
            ).format(s)
            + ds_filter,
            params,
        )
        datasets = [_jsonable(r) for r in cur.fetchall()]
        cur.execute(
            sql.SQL("SELECT id, dataset_id, version, schema FROM {}.dataset_schema_versions").format(s)
            + sv_filter,
            params,
        )
        versions = [_jsonable(r) for r in cur.fetchall()]
        cur.execute(sql.SQL("SELECT id, name, kind, config FROM {}.storage_targets").format(s))
        targets = [_jsonable(r) for r in cur.fetchall()]
        if bulk:  # same snapshot, COPY -> Arrow, no Python per row
            from sinks.context.bulkload import copy_partitions

            table = copy_partitions(cur, schema, dataset_ids if only else None, connect, connections)
            return CatalogSnapshot(lsn, datasets, versions, targets, [], table)
        cur.execute(
            sql.SQL(
                "SELECT p.id, p.dataset_id, p.manifest_id, p.manifest_shard, p.storage_target_id, p.file_path,"
                " p.file_format, p.start_time, p.end_time, p.row_count, p.file_size_bytes,"
                f" {SQL_EXPRESSION} AS schema_version_id,"
                " coalesce(p.metadata->>'tableName', 'records') AS table_name, p.partition_key"
                " FROM {s}.dataset_partitions p JOIN {s}.dataset_manifests m"
                " ON m.id = p.manifest_id AND m.status = 'published'"
                " WHERE true"
            ).format(s=s)
            + p_filter,
            params,
        )
        partitions = [_jsonable(r) for r in cur.fetchall()]
    return CatalogSnapshot(lsn, datasets, versions, targets, partitions)


def as_json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return dumps_exact(value).decode()
