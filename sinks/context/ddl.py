"""The partition index: DuckDB tables of one context (all shards, tagged by ``shard``) and the
``timestore_runtime`` views Timestore's SQL runtime exposed (Timestore's initializeDuckDbDatabase runtime views)."""

from __future__ import annotations

from walduck.deltas import PARTITION_FIELDS

INDEX_SCHEMA = "wd"

# the biggest table, also re-created on its own by a build that replaces every row (build.py: no row deletes)
PARTITIONS_TABLE = f"""CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.partitions (
    id VARCHAR, dataset_id VARCHAR, shard INTEGER, manifest_id VARCHAR, manifest_shard VARCHAR,
    storage_target_id VARCHAR, file_path VARCHAR, location VARCHAR, file_format VARCHAR,
    start_time TIMESTAMP, end_time TIMESTAMP, row_count BIGINT, file_size_bytes BIGINT,
    schema_version_id VARCHAR, table_name VARCHAR, partition_key VARCHAR
)"""

TABLES = f"""
CREATE SCHEMA IF NOT EXISTS {INDEX_SCHEMA};
CREATE SCHEMA IF NOT EXISTS timestore;
CREATE SCHEMA IF NOT EXISTS timestore_runtime;
CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.datasets (
    id VARCHAR, shard INTEGER, slug VARCHAR, name VARCHAR, description VARCHAR, status VARCHAR,
    write_format VARCHAR, default_storage_target_id VARCHAR, metadata VARCHAR,
    created_at TIMESTAMP, updated_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.schema_versions (
    id VARCHAR, dataset_id VARCHAR, shard INTEGER, version INTEGER, schema VARCHAR
);
CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.storage_targets (
    id VARCHAR, name VARCHAR, kind VARCHAR, config VARCHAR
);
{PARTITIONS_TABLE};
CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.columns (
    dataset_id VARCHAR, shard INTEGER, ordinal INTEGER, column_name VARCHAR, data_type VARCHAR,
    nullable BOOLEAN, description VARCHAR
);
CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.shard_progress (
    shard INTEGER, deltas_offset BIGINT, applied_lsn UBIGINT, commit_ts TIMESTAMP,
    bootstrapped BOOLEAN, applied_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.src_offsets (src_partition INTEGER, stream VARCHAR, src_offset BIGINT);
-- context files written before source offsets were kept per (partition, dataset stream): add the column and
-- drop the old per-partition rows (the deltas offset in shard_progress still drops re-delivered deltas)
ALTER TABLE {INDEX_SCHEMA}.src_offsets ADD COLUMN IF NOT EXISTS stream VARCHAR;
DELETE FROM {INDEX_SCHEMA}.src_offsets WHERE stream IS NULL;
-- last rebuild from PostgreSQL per dataset ('*' = a full rebuild's failure), kept across restarts
CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.rebuilds (
    dataset_id VARCHAR, scope VARCHAR, reason VARCHAR, result VARCHAR, error VARCHAR, finished_at TIMESTAMP,
    duration_ms DOUBLE, lsn VARCHAR, replayed_deltas INTEGER
);
"""

RUNTIME_VIEWS = f"""
CREATE OR REPLACE VIEW timestore_runtime.datasets AS
SELECT d.id AS dataset_id, d.slug AS dataset_slug, d.name AS dataset_name, d.status, d.write_format,
       coalesce(p.partition_count, 0)::BIGINT AS partition_count, coalesce(p.total_rows, 0)::BIGINT AS total_rows,
       coalesce(p.total_bytes, 0)::BIGINT AS total_bytes, d.updated_at, CAST(NULL AS INTEGER) AS manifest_version
FROM {INDEX_SCHEMA}.datasets d
LEFT JOIN (SELECT dataset_id, count(*) AS partition_count, sum(row_count) AS total_rows,
                  sum(file_size_bytes) AS total_bytes
           FROM {INDEX_SCHEMA}.partitions GROUP BY dataset_id) p ON p.dataset_id = d.id;
CREATE OR REPLACE VIEW timestore_runtime.partitions AS
SELECT d.slug AS dataset_slug, p.id AS partition_id, t.name AS storage_target, t.kind AS storage_kind,
       p.location, p.table_name, p.row_count, p.file_size_bytes, p.start_time, p.end_time
FROM {INDEX_SCHEMA}.partitions p
JOIN {INDEX_SCHEMA}.datasets d ON d.id = p.dataset_id
LEFT JOIN {INDEX_SCHEMA}.storage_targets t ON t.id = p.storage_target_id;
CREATE OR REPLACE VIEW timestore_runtime.columns AS
SELECT d.slug AS dataset_slug, c.column_name, c.data_type, c.nullable, c.description
FROM {INDEX_SCHEMA}.columns c JOIN {INDEX_SCHEMA}.datasets d ON d.id = c.dataset_id;
"""

_CONTEXT_ONLY_PARTITION_COLUMNS = {"dataset_id": "shard", "file_path": "location"}
"""The columns ``wd.partitions`` adds to a delta's partition entry, each after the field it follows: the context
shard holding the row, and the file's resolved location."""

PARTITION_COLUMNS = tuple(
    column
    for name in PARTITION_FIELDS
    for column in (name, _CONTEXT_ONLY_PARTITION_COLUMNS.get(name))
    if column is not None
)
"""The columns of ``wd.partitions``, in table order: :data:`walduck.deltas.PARTITION_FIELDS` (what a delta's
partition entry carries) with :data:`_CONTEXT_ONLY_PARTITION_COLUMNS` inserted."""
