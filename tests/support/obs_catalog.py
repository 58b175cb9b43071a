"""The one-dataset ``obs`` catalog (local storage target, schema v1, one published manifest) in real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from stack.catalog.migrate import apply_migrations

_PARTITION_INSERT = (
    "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, manifest_shard, partition_key,"
    " storage_target_id, file_format, file_path, file_size_bytes, row_count, start_time, end_time, metadata)"
    " VALUES (%s, 'ds-obs', 'dm-obs', '2024-01-01', '{}', 'st-local', 'parquet', %s, %s, %s, %s, %s, '{}')"
)


def _partition_params(f: dict[str, Any]) -> list[Any]:
    return [f["id"], f["file_path"], f["file_size_bytes"], f["row_count"], f["start_time"], f["end_time"]]


def seed_obs_catalog(dsn: str, files: Iterable[dict[str, Any]] = ()) -> None:
    """Migrate, then write the ``obs`` dataset and its ``files`` (DeltaFactory.write_file dicts) in one transaction."""
    apply_migrations(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO timestore.storage_targets (id, name, kind, config) VALUES "
            "('st-local', 'timestore-default-local', 'local', '{}')"
        )
        conn.execute("INSERT INTO timestore.datasets (id, slug, name) VALUES ('ds-obs', 'obs', 'Obs')")
        conn.execute(
            "INSERT INTO timestore.dataset_schema_versions (id, dataset_id, version, schema) VALUES "
            """('dsv-obs-1', 'ds-obs', 1, '{"fields":[{"name":"ts","type":"timestamp"},{"name":"value","type":"double"}]}')"""
        )
        conn.execute(
            "INSERT INTO timestore.dataset_manifests (id, dataset_id, version, status, schema_version_id, manifest_shard)"
            " VALUES ('dm-obs', 'ds-obs', 1, 'published', 'dsv-obs-1', '2024-01-01')"
        )
        for f in files:
            conn.execute(_PARTITION_INSERT, _partition_params(f))


def insert_obs_partition(dsn: str, f: dict[str, Any]) -> None:
    """One more ``obs`` partition, in its own transaction."""
    with psycopg.connect(dsn) as conn:
        conn.execute(_PARTITION_INSERT, _partition_params(f))


async def obs_catalog_with_one_file(fresh_db: Any, fresh_topics: Any, factory: Any) -> tuple[str, Any, dict]:
    """A fresh ``obs`` catalog holding one partition (p1, 3 rows) and a one-partition topic set over it."""
    dsn = fresh_db()
    seed_obs_catalog(dsn)
    wd = await fresh_topics(partitions=1, pg_dsn=dsn)
    wd = wd.model_copy(update={"storage_root": factory.root})
    p1 = factory.write_file("obs", 0, 3)
    insert_obs_partition(dsn, p1)
    return dsn, wd, p1
