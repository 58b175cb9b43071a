"""A whole-catalog bulk read split over several connections sharing one exported snapshot (issue 15).

Oracle: the single-connection COPY of the same snapshot. A commit that lands after the snapshot was exported but
before a helper connection starts must be invisible to every range (a helper that took its own snapshot would
see it).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from sinks.context.bulkload import copy_partitions
from support.obs_catalog import seed_obs_catalog

pytestmark = pytest.mark.integration

ROWS = 6_000  # ~ 100 blocks of dataset_partitions: every range of up to 16 holds rows


def _seed(dsn: str) -> None:
    seed_obs_catalog(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO timestore.dataset_manifests (id, dataset_id, version, status, schema_version_id,"
            " manifest_shard) VALUES ('dm-old', 'ds-obs', 2, 'draft', 'dsv-obs-1', '2024-01-01')"
        )
        conn.execute(
            "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, manifest_shard, partition_key,"
            " storage_target_id, file_format, file_path, file_size_bytes, row_count, start_time, end_time, metadata)"
            " SELECT 'p' || lpad(i::text, 6, '0'), 'ds-obs', CASE WHEN i %% 7 = 0 THEN 'dm-old' ELSE 'dm-obs' END,"
            " '2024-01-01', jsonb_build_object('i', i), 'st-local', 'parquet', 'obs/' || i || '.parquet', i, i,"
            " '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 second',"
            " '2024-01-01 00:00:01.000001+00'::timestamptz + i * interval '1 second',"
            " CASE WHEN i %% 5 = 0 THEN jsonb_build_object('schemaVersionId', 'sv' || i) ELSE '{}' END"
            " FROM generate_series(1, %s) i",
            [ROWS],
        )


def _read(
    dsn: str, connections: int, before_helper: Any = None, schema: str = "timestore"
) -> list[tuple[Any, ...]]:
    def connect() -> psycopg.Connection[Any]:
        if before_helper is not None:
            before_helper()
        return psycopg.connect(dsn)

    with psycopg.connect(dsn) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL DateStyle = ISO")
        with conn.cursor() as cur:
            table = copy_partitions(cur, schema, None, connect, connections)
    rows = [tuple(r.values()) for r in table.to_pylist()]
    return sorted(rows, key=lambda r: r[0])


@pytest.mark.parametrize("connections", [2, 3, 16])
def test_parallel_ranges_read_the_same_rows_as_one_copy(fresh_db, connections):
    dsn = fresh_db()
    _seed(dsn)
    one = _read(dsn, 1)
    assert len(one) == ROWS - ROWS // 7  # the draft manifest's partitions are not visible
    assert _read(dsn, connections) == one


def test_helpers_see_the_exported_snapshot_not_later_commits(fresh_db):
    dsn = fresh_db()
    _seed(dsn)
    late = [0]
    lock = threading.Lock()

    def commit_more() -> None:  # runs after pg_export_snapshot(), before each helper connects (in its thread)
        with lock, psycopg.connect(dsn) as conn:
            late[0] += 1
            conn.execute(
                "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, manifest_shard,"
                " partition_key, storage_target_id, file_format, file_path, row_count, start_time, end_time,"
                " metadata) VALUES (%s, 'ds-obs', 'dm-obs', '2024-01-01', '{}', 'st-local', 'parquet',"
                " %s, 1, '2024-01-02 00:00:00+00', '2024-01-02 01:00:00+00', '{}')",
                [f"zz-late-{late[0]}", f"late-{late[0]}.parquet"],
            )
            conn.execute("DELETE FROM timestore.dataset_partitions WHERE id = %s", [f"p{late[0]:06d}"])

    before = _read(dsn, 1)
    got = _read(dsn, 4, before_helper=commit_more)
    assert late[0] == 3  # three helper connections, each after a commit
    assert got == before
    after = {r[0] for r in _read(dsn, 1)}
    assert "zz-late-1" in after and "p000001" not in after  # the commits did land


def test_a_schema_name_that_needs_quoting_is_read_in_ranges(fresh_db):
    """The relation size behind the block ranges is looked up by a quoted name (an unquoted one folds case and
    fails on ``Cat Alog``)."""
    dsn = fresh_db()
    _seed(dsn)
    one = _read(dsn, 1)
    with psycopg.connect(dsn) as conn:
        conn.execute('ALTER SCHEMA timestore RENAME TO "Cat Alog"')
    assert _read(dsn, 3, schema="Cat Alog") == one
