"""The catalog migrations create Timestore's schema (Timestore's catalog DDL, migrations 001–014), idempotently, in any schema."""

from __future__ import annotations

import psycopg
import pytest

from stack.catalog.migrate import apply_migrations, migration_files

pytestmark = pytest.mark.integration

TABLES = {
    "storage_targets",
    "datasets",
    "dataset_schema_versions",
    "dataset_manifests",
    "dataset_partitions",
    "dataset_retention_policies",
    "ingestion_batches",
    "lifecycle_job_runs",
    "lifecycle_audit_log",
    "compaction_checkpoints",
    "dataset_access_audit",
    "filestore_node_state",
    "sql_saved_queries",
    "streaming_watermarks",
    "timestore_staging_schemas",
    "schema_migrations",
}

INDEXES = {
    "idx_storage_targets_kind",
    "idx_datasets_status",
    "idx_datasets_storage_target",
    "idx_dataset_schema_versions_dataset",
    "idx_dataset_manifests_dataset",
    "idx_dataset_manifests_status",
    "idx_dataset_manifests_dataset_shard_version",
    "idx_dataset_manifests_shard_status",
    "uq_dataset_manifests_published_shard",
    "idx_dataset_partitions_time",
    "idx_dataset_partitions_manifest",
    "idx_dataset_partitions_shard_time",
    "uq_dataset_partitions_path",
    "uq_dataset_partitions_ingestion_signature",
    "idx_lifecycle_job_runs_dataset",
    "idx_lifecycle_job_runs_status",
    "idx_lifecycle_audit_dataset",
    "uq_compaction_checkpoints_manifest",
    "idx_compaction_checkpoints_dataset",
    "idx_dataset_access_audit_slug",
    "idx_dataset_access_audit_dataset_filters",
    "idx_dataset_access_audit_created_at",
    "idx_sql_saved_queries_updated",
    "idx_filestore_node_state_backend",
    "idx_streaming_watermarks_dataset",
    "datasets_slug_key",
    "storage_targets_name_key",
    "dataset_schema_versions_dataset_id_version_key",
    "dataset_manifests_dataset_id_version_key",
    "ingestion_batches_dataset_id_idempotency_key_key",
}
DROPPED_INDEXES = {"uq_dataset_manifests_published", "idx_dataset_access_audit_dataset"}

# (table, referencing column) -> (referenced table, ON DELETE action code of pg_constraint.confdeltype)
FOREIGN_KEYS = {
    ("datasets", "default_storage_target_id"): ("storage_targets", "a"),
    ("dataset_schema_versions", "dataset_id"): ("datasets", "c"),
    ("dataset_manifests", "dataset_id"): ("datasets", "c"),
    ("dataset_manifests", "schema_version_id"): ("dataset_schema_versions", "n"),
    ("dataset_manifests", "parent_manifest_id"): ("dataset_manifests", "n"),
    ("dataset_partitions", "dataset_id"): ("datasets", "c"),
    ("dataset_partitions", "manifest_id"): ("dataset_manifests", "c"),
    ("dataset_partitions", "storage_target_id"): ("storage_targets", "a"),
    ("dataset_retention_policies", "dataset_id"): ("datasets", "c"),
    ("ingestion_batches", "dataset_id"): ("datasets", "c"),
    ("ingestion_batches", "manifest_id"): ("dataset_manifests", "c"),
    ("lifecycle_job_runs", "dataset_id"): ("datasets", "n"),
    ("lifecycle_audit_log", "dataset_id"): ("datasets", "c"),
    ("lifecycle_audit_log", "manifest_id"): ("dataset_manifests", "n"),
    ("compaction_checkpoints", "dataset_id"): ("datasets", "c"),
    ("compaction_checkpoints", "manifest_id"): ("dataset_manifests", "c"),
    ("dataset_access_audit", "dataset_id"): ("datasets", "n"),
    ("streaming_watermarks", "dataset_id"): ("datasets", "c"),
    ("timestore_staging_schemas", "dataset_id"): ("datasets", "c"),
}

CHECKS = {
    "storage_targets": ["kind IN ('local', 's3', 'gcs', 'azure_blob')"],
    "datasets": ["status IN ('active', 'inactive')", "write_format IN ('parquet')"],
    "dataset_schema_versions": ["version > 0"],
    "dataset_manifests": ["version > 0", "status IN ('draft', 'published', 'superseded')"],
    "dataset_partitions": ["file_format IN ('parquet')", "end_time >= start_time"],
    "lifecycle_job_runs": ["status IN ('queued', 'running', 'completed', 'failed', 'skipped')"],
    "compaction_checkpoints": [
        "status IN ('pending', 'completed')",
        "cursor >= 0",
        "total_groups >= 0",
        "retry_count >= 0",
    ],
}

# (table, column) -> (data_type, is_nullable, default contains)
COLUMNS = {
    ("dataset_manifests", "manifest_shard"): ("text", "NO", "'root'"),
    ("dataset_manifests", "status"): ("text", "NO", "'draft'"),
    ("dataset_manifests", "total_rows"): ("bigint", "NO", "0"),
    ("dataset_manifests", "partition_count"): ("integer", "NO", "0"),
    ("dataset_manifests", "published_at"): ("timestamp with time zone", "YES", None),
    ("dataset_partitions", "manifest_shard"): ("text", "NO", "'root'"),
    ("dataset_partitions", "column_statistics"): ("jsonb", "NO", "'{}'"),
    ("dataset_partitions", "column_bloom_filters"): ("jsonb", "NO", "'{}'"),
    ("dataset_partitions", "ingestion_signature"): ("text", "YES", None),
    ("dataset_partitions", "row_count"): ("bigint", "YES", None),
    ("dataset_partitions", "start_time"): ("timestamp with time zone", "NO", None),
    ("datasets", "metadata"): ("jsonb", "NO", "'{}'"),
    ("datasets", "status"): ("text", "NO", "'active'"),
    ("dataset_access_audit", "actor_scopes"): ("ARRAY", "NO", "'{}'"),
    ("lifecycle_job_runs", "operations"): ("ARRAY", "NO", "'{}'"),
    ("schema_migrations", "applied_at"): ("timestamp with time zone", "NO", "now()"),
}


def _check_schema(conn: psycopg.Connection, schema: str) -> None:
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
            [schema],
        )
    }
    assert tables == TABLES
    views = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = %s", [schema]
        )
    }
    assert views == {"dataset_manifest_current"}
    indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", [schema])}
    assert INDEXES <= indexes, INDEXES - indexes
    assert not (DROPPED_INDEXES & indexes)
    partial = dict(
        conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = ANY(%s)",
            [schema, ["uq_dataset_manifests_published_shard", "uq_dataset_partitions_ingestion_signature"]],
        ).fetchall()
    )
    assert "UNIQUE" in partial["uq_dataset_manifests_published_shard"]
    assert (
        "(dataset_id, manifest_shard) WHERE (status = 'published'::text)"
        in partial["uq_dataset_manifests_published_shard"]
    )
    assert "WHERE (ingestion_signature IS NOT NULL)" in partial["uq_dataset_partitions_ingestion_signature"]

    fks = {
        (r[0], r[1]): (r[2], r[3])
        for r in conn.execute(
            """SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, c.confdeltype::text
                 FROM pg_constraint c
                 JOIN pg_namespace n ON n.oid = c.connamespace
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                WHERE c.contype = 'f' AND n.nspname = %s""",
            [schema],
        )
    }
    strip = lambda name: name.split(".")[-1].strip('"')  # noqa: E731
    fks = {(strip(t), col): (strip(ref), act) for (t, col), (ref, act) in fks.items()}
    assert fks == FOREIGN_KEYS

    for table, exprs in CHECKS.items():
        defs = [
            r[0]
            for r in conn.execute(
                """SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
                     JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                    WHERE c.contype = 'c' AND n.nspname = %s AND t.relname = %s""",
                [schema, table],
            )
        ]
        assert len(defs) == len(exprs), (table, defs)

    pks = {
        r[0]: r[1]
        for r in conn.execute(
            """SELECT t.relname, pg_get_constraintdef(c.oid) FROM pg_constraint c
                 JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                WHERE c.contype = 'p' AND n.nspname = %s""",
            [schema],
        )
    }
    assert pks["streaming_watermarks"] == "PRIMARY KEY (connector_id, dataset_id)"
    assert pks["dataset_partitions"] == "PRIMARY KEY (id)"
    assert pks["dataset_retention_policies"] == "PRIMARY KEY (dataset_id)"

    for (table, column), (dtype, nullable, default) in COLUMNS.items():
        row = conn.execute(
            """SELECT data_type, is_nullable, column_default FROM information_schema.columns
                WHERE table_schema = %s AND table_name = %s AND column_name = %s""",
            [schema, table, column],
        ).fetchone()
        assert row is not None, (table, column)
        assert row[0] == dtype and row[1] == nullable, (table, column, row)
        if default is None:
            assert row[2] is None, (table, column, row)
        else:
            assert row[2] is not None and default in row[2], (table, column, row)


def test_migrations_create_the_timestore_catalog(fresh_db) -> None:
    dsn = fresh_db()
    applied = apply_migrations(dsn)
    assert applied == [m for m, _ in migration_files()]
    assert applied[0] == "001_timestore_core_schema" and applied[7] == "008_timestore_manifest_shards"
    with psycopg.connect(dsn, autocommit=True) as conn:
        _check_schema(conn, "timestore")
        recorded = [r[0] for r in conn.execute("SELECT id FROM timestore.schema_migrations ORDER BY id")]
        assert recorded == applied


def test_apply_twice_is_a_no_op(fresh_db) -> None:
    dsn = fresh_db()
    apply_migrations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = conn.execute("SELECT id, applied_at FROM timestore.schema_migrations ORDER BY id").fetchall()
    assert apply_migrations(dsn) == []
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = conn.execute("SELECT id, applied_at FROM timestore.schema_migrations ORDER BY id").fetchall()
        assert after == before


def test_quoted_schema_name_and_partial_unique_published_shard(fresh_db) -> None:
    dsn = fresh_db()
    schema = 'Time "Store"'
    assert len(apply_migrations(dsn, schema)) == len(migration_files())
    with psycopg.connect(dsn, autocommit=True) as conn:
        _check_schema(conn, schema)
        assert conn.execute("SELECT to_regnamespace('timestore')").fetchone() == (None,)
        conn.execute('SET search_path TO "Time ""Store"""')
        conn.execute("INSERT INTO datasets (id, slug, name) VALUES ('ds-1', 'd1', 'd1')")
        insert = (
            "INSERT INTO dataset_manifests (id, dataset_id, version, status, manifest_shard)"
            " VALUES (%s, 'ds-1', %s, %s, %s)"
        )
        conn.execute(insert, ["dm-1", 1, "published", "2024-01-01"])
        conn.execute(insert, ["dm-2", 2, "published", "2024-01-02"])
        conn.execute(insert, ["dm-3", 3, "superseded", "2024-01-01"])
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ["dm-4", 4, "published", "2024-01-01"])
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, ["dm-5", 0, "published", "2024-01-05"])
        current = conn.execute(
            "SELECT manifest_id FROM dataset_manifest_current ORDER BY manifest_shard"
        ).fetchall()
        assert current == [("dm-1",), ("dm-2",)]
