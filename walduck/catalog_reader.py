"""Catalog reads straight from PostgreSQL: the visible partition set and partition locations.

The single place other components (verify, full-scan contexts, tests) read "what should a
context contain" from the catalog. Visible = partitions of manifests with ``status='published'``
(at most one per (dataset, manifest shard)); partitions of superseded manifests are excluded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from walduck.attribution import partition_schema_version
from walduck.deltas import PARTITION_FIELDS
from walduck.jsonexact import dumps_exact
from walduck.pgvalues import exact_loaders
from walduck.timeutil import iso

DEFAULT_TABLE_NAME = "records"

_VISIBLE_SQL = """
SELECT m.dataset_id AS m_dataset_id,
       m.manifest_shard AS m_manifest_shard,
       p.id, p.dataset_id, p.manifest_id, p.manifest_shard, p.storage_target_id, p.file_path,
       p.file_format, p.start_time, p.end_time, p.row_count, p.file_size_bytes,
       p.partition_key, p.metadata
  FROM {schema}.dataset_manifests m
  LEFT JOIN {schema}.dataset_partitions p ON p.manifest_id = m.id
 WHERE m.status = 'published'
 ORDER BY m.dataset_id, m.manifest_shard, p.start_time, p.id
"""


def _member_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else dumps_exact(value).decode()


def partition_row(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``dataset_partitions`` row (dict) as a delta partition entry (``PARTITION_FIELDS``)."""
    metadata = raw.get("metadata")
    if not isinstance(metadata, dict):  # jsonb of any shape: only an object's members count (like ->>)
        metadata = {}
    out: dict[str, Any] = {}
    for name in PARTITION_FIELDS:
        if name == "schema_version_id":
            out[name] = partition_schema_version(metadata)  # never the manifest's (walduck/attribution.py)
        elif name == "table_name":
            out[name] = _member_text(metadata.get("tableName")) or DEFAULT_TABLE_NAME
        elif name == "partition_key":
            key = raw.get("partition_key")
            out[name] = dict(key) if isinstance(key, dict) else (key if key is not None else {})
        else:
            value = raw.get(name)
            out[name] = iso(value) if isinstance(value, datetime) else value
    return out


def visible_partitions(
    conn: psycopg.Connection, schema: str = "timestore"
) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """``{(dataset_id, manifest_shard): {partition_id: partition entry}}`` over published manifests.

    A published manifest without partitions appears with an empty dict.
    """
    query = sql.SQL(_VISIBLE_SQL).format(schema=sql.Identifier(schema))
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        exact_loaders(cur)  # jsonb exact, timestamps as the change records carry them (also ±infinity, BC)
        cur.execute("SET DateStyle = ISO")
        cur.execute(query)
        for raw in cur:
            shard = out.setdefault((raw["m_dataset_id"], raw["m_manifest_shard"]), {})
            if raw["id"] is not None:
                shard[raw["id"]] = partition_row(raw)
    return out


def storage_targets(conn: psycopg.Connection, schema: str = "timestore") -> dict[str, dict[str, Any]]:
    """All ``storage_targets`` rows by id."""
    query = sql.SQL("SELECT id, name, kind, description, config FROM {}.storage_targets").format(
        sql.Identifier(schema)
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query)
        return {row["id"]: row for row in cur}
