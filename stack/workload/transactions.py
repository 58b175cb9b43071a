"""Timestore's catalog write shapes (Timestore's ingest and lifecycle write paths), each as ONE PostgreSQL transaction.

Every function takes an autocommit connection whose ``search_path`` is the catalog schema
(see :func:`connect_catalog`), like Timestore's pooled clients. Functions marked "autocommit"
issue a single statement outside an explicit transaction, as Timestore does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from walduck.errors import WalduckError
from walduck.lsn import parse_lsn
from walduck.timeutil import iso


class ManifestVersionConflict(WalduckError, RuntimeError):
    pass


@dataclass(slots=True)
class PartitionSpec:
    id: str
    dataset_id: str
    partition_key: dict[str, str]
    storage_target_id: str
    file_path: str
    file_size_bytes: int
    row_count: int
    start_time: datetime
    end_time: datetime
    checksum: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    column_statistics: dict[str, Any] = field(default_factory=dict)
    ingestion_signature: str | None = None


def connect_catalog(dsn: str, schema: str) -> psycopg.Connection:
    """An autocommit connection with ``search_path TO "<schema>", public`` (as Timestore's pool)."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
    return conn


def current_lsn(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


def upsert_storage_target(conn: psycopg.Connection, target_id: str, name: str, root: str) -> None:
    """``ensureDefaultStorageTarget``: upsert of a local target (autocommit).

    Two writers inserting the same target at once: ``ON CONFLICT (id)`` arbitrates only the id, so the loser can
    hit the unique *name* first (UniqueViolation on ``storage_targets_name_key``; it killed one of the failover
    bench's three writers). The row exists by then: the retry takes the ``ON CONFLICT`` path."""
    for attempt in range(3):
        try:
            conn.execute(
                """INSERT INTO storage_targets (id, name, kind, description, config)
                   VALUES (%s, %s, 'local', 'Default local storage target', %s)
                   ON CONFLICT (id) DO UPDATE
                     SET name = EXCLUDED.name, kind = EXCLUDED.kind, config = EXCLUDED.config, updated_at = NOW()""",
                [target_id, name, Jsonb({"root": root})],
            )
            return
        except psycopg.errors.UniqueViolation:
            if attempt == 2:
                raise


def insert_dataset(
    conn: psycopg.Connection,
    dataset_id: str,
    slug: str,
    name: str,
    storage_target_id: str,
    metadata: dict[str, Any],
    description: str | None = None,
) -> None:
    """``INSERT datasets`` (autocommit)."""
    conn.execute(
        """INSERT INTO datasets (id, slug, name, description, status, write_format,
                                 default_storage_target_id, metadata)
           VALUES (%s, %s, %s, %s, 'active', 'parquet', %s, %s)""",
        [dataset_id, slug, name, description, storage_target_id, Jsonb(metadata)],
    )


def next_schema_version(conn: psycopg.Connection, dataset_id: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_schema_versions WHERE dataset_id = %s",
        [dataset_id],
    ).fetchone()
    assert row is not None
    return int(row[0])


def insert_schema_version(
    conn: psycopg.Connection,
    schema_version_id: str,
    dataset_id: str,
    version: int,
    fields: list[dict[str, Any]],
    checksum: str,
    description: str | None = None,
) -> None:
    """``INSERT dataset_schema_versions`` (autocommit; version = MAX+1 read beforehand)."""
    conn.execute(
        """INSERT INTO dataset_schema_versions (id, dataset_id, version, description, schema, checksum)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        [schema_version_id, dataset_id, version, description, Jsonb({"fields": fields}), checksum],
    )


def next_manifest_version(conn: psycopg.Connection, dataset_id: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_manifests WHERE dataset_id = %s", [dataset_id]
    ).fetchone()
    assert row is not None
    return int(row[0])


_INSERT_PARTITION = """
INSERT INTO dataset_partitions (id, dataset_id, manifest_id, manifest_shard, partition_key, storage_target_id,
                                file_format, file_path, file_size_bytes, row_count, start_time, end_time,
                                checksum, metadata, column_statistics, column_bloom_filters, ingestion_signature)
VALUES (%s, %s, %s, %s, %s, %s, 'parquet', %s, %s, %s, %s, %s, %s, %s, %s, '{}'::jsonb, %s)
"""


def _insert_partitions(
    cur: psycopg.Cursor, manifest_id: str, manifest_shard: str, parts: list[PartitionSpec]
) -> None:
    for p in parts:
        cur.execute(
            _INSERT_PARTITION,
            [
                p.id,
                p.dataset_id,
                manifest_id,
                manifest_shard,
                Jsonb(p.partition_key),
                p.storage_target_id,
                p.file_path,
                p.file_size_bytes,
                p.row_count,
                p.start_time,
                p.end_time,
                p.checksum,
                Jsonb(p.metadata),
                Jsonb(p.column_statistics),
                p.ingestion_signature,
            ],
        )


def _rollups(cur: psycopg.Cursor, manifest_id: str) -> tuple[int, int, int, datetime | None, datetime | None]:
    cur.execute(
        """SELECT COUNT(*), COALESCE(SUM(row_count), 0), COALESCE(SUM(file_size_bytes), 0),
                  MIN(start_time), MAX(end_time)
             FROM dataset_partitions WHERE manifest_id = %s""",
        [manifest_id],
    )
    row = cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), row[3], row[4]


def _update_rollups(
    cur: psycopg.Cursor, manifest_id: str
) -> tuple[int, int, int, datetime | None, datetime | None]:
    roll = _rollups(cur, manifest_id)
    cur.execute(
        """UPDATE dataset_manifests
              SET partition_count = %s, total_rows = %s, total_bytes = %s, updated_at = NOW()
            WHERE id = %s""",
        [roll[0], roll[1], roll[2], manifest_id],
    )
    return roll


def _statistics(roll: tuple[int, int, int, datetime | None, datetime | None]) -> dict[str, Any]:
    return {
        "rowCount": roll[1],
        "fileSizeBytes": roll[2],
        "startTime": iso(roll[3]) if roll[3] else None,
        "endTime": iso(roll[4]) if roll[4] else None,
    }


def _touch_dataset(cur: psycopg.Cursor, dataset_id: str) -> None:
    cur.execute("UPDATE datasets SET updated_at = NOW() WHERE id = %s", [dataset_id])


def replace_partitions_in_manifest(
    conn: psycopg.Connection,
    dataset_id: str,
    manifest_id: str,
    remove_ids: list[str],
    add: list[PartitionSpec],
    summary_patch: dict[str, Any],
    metadata_patch: dict[str, Any],
    schema_version_id: str | None = None,
) -> dict[str, Any]:
    """Append (remove=[]), retention (add=[]) or compaction (both) in ONE transaction:

    ``SELECT … FOR UPDATE`` manifest, ``DELETE`` removed partitions, ``INSERT`` added ones
    (manifest_shard copied from the manifest), rollup ``UPDATE``, summary/statistics/metadata
    ``UPDATE``, ``UPDATE datasets.updated_at``. Returns the manifest's new rollups.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT id, manifest_shard, status FROM dataset_manifests WHERE id = %s AND dataset_id = %s FOR UPDATE",
            [manifest_id, dataset_id],
        )
        row = cur.fetchone()
        if row is None:
            raise LookupError(f"manifest {manifest_id} not found")
        shard = row[1]
        if remove_ids:
            cur.execute(
                "DELETE FROM dataset_partitions WHERE dataset_id = %s AND manifest_id = %s AND id = ANY(%s)",
                [dataset_id, manifest_id, remove_ids],
            )
        _insert_partitions(cur, manifest_id, shard, add)
        roll = _update_rollups(cur, manifest_id)
        cur.execute(
            """UPDATE dataset_manifests
                  SET summary = summary || %s, statistics = %s, metadata = metadata || %s,
                      schema_version_id = COALESCE(%s, schema_version_id), updated_at = NOW()
                WHERE id = %s""",
            [
                Jsonb(summary_patch),
                Jsonb(_statistics(roll)),
                Jsonb(metadata_patch),
                schema_version_id,
                manifest_id,
            ],
        )
        _touch_dataset(cur, dataset_id)
    return {
        "manifest_id": manifest_id,
        "manifest_shard": shard,
        "partition_count": roll[0],
        "total_rows": roll[1],
    }


def create_dataset_manifest(
    conn: psycopg.Connection,
    manifest_id: str,
    dataset_id: str,
    version: int,
    manifest_shard: str,
    schema_version_id: str | None,
    parent_manifest_id: str | None,
    partitions: list[PartitionSpec],
    summary: dict[str, Any],
    metadata: dict[str, Any],
    created_by: str = "timestore-ingestion",
) -> dict[str, Any]:
    """``createDatasetManifest`` in ONE transaction: version check, supersede the published parent,
    ``INSERT`` the published manifest, ``INSERT`` its partitions, rollup ``UPDATE``, dataset ``UPDATE``."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT MAX(version) FROM dataset_manifests WHERE dataset_id = %s", [dataset_id])
        row = cur.fetchone()
        current_max = int(row[0]) if row and row[0] is not None else 0
        if version <= current_max:
            raise ManifestVersionConflict(
                f"Manifest version {version} is not greater than existing max version {current_max}"
            )
        if parent_manifest_id is not None:
            cur.execute(
                """UPDATE dataset_manifests SET status = 'superseded', updated_at = NOW()
                    WHERE id = %s AND status = 'published'""",
                [parent_manifest_id],
            )
        roll_stats = {
            "rowCount": sum(p.row_count for p in partitions),
            "fileSizeBytes": sum(p.file_size_bytes for p in partitions),
            "startTime": iso(min(p.start_time for p in partitions)) if partitions else None,
            "endTime": iso(max(p.end_time for p in partitions)) if partitions else None,
        }
        cur.execute(
            """INSERT INTO dataset_manifests (id, dataset_id, version, status, schema_version_id,
                                              parent_manifest_id, manifest_shard, summary, statistics, metadata,
                                              partition_count, total_rows, total_bytes, created_by, published_at)
               VALUES (%s, %s, %s, 'published', %s, %s, %s, %s, %s, %s, 0, 0, 0, %s, NOW())""",
            [
                manifest_id,
                dataset_id,
                version,
                schema_version_id,
                parent_manifest_id,
                manifest_shard,
                Jsonb(summary),
                Jsonb(roll_stats),
                Jsonb(metadata),
                created_by,
            ],
        )
        _insert_partitions(cur, manifest_id, manifest_shard, partitions)
        roll = _update_rollups(cur, manifest_id)
        _touch_dataset(cur, dataset_id)
    return {"manifest_id": manifest_id, "manifest_shard": manifest_shard, "partition_count": roll[0]}


def set_dataset_status(conn: psycopg.Connection, dataset_id: str, status: str) -> None:
    """Archive (``inactive``) / reactivate: one ``UPDATE datasets`` (autocommit)."""
    conn.execute("UPDATE datasets SET status = %s, updated_at = NOW() WHERE id = %s", [status, dataset_id])


def merge_dataset_metadata(conn: psycopg.Connection, dataset_id: str, patch: dict[str, Any]) -> None:
    """Admin PATCH of metadata: one ``UPDATE datasets`` (autocommit)."""
    conn.execute(
        "UPDATE datasets SET metadata = metadata || %s, updated_at = NOW() WHERE id = %s",
        [Jsonb(patch), dataset_id],
    )
