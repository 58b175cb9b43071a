"""Issue 16: the bulk rebuild path (COPY -> Arrow) takes partitions whose times have no ISO 8601 form and
clamps them as the delta path does (docs/contexts.md "Values")."""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest

from sinks.context.bulkload import copy_partitions
from stack.catalog.migrate import apply_migrations

pytestmark = pytest.mark.integration


def test_copy_partitions_clamps_infinite_bc_and_far_future_times(fresh_db) -> None:
    dsn = fresh_db()
    apply_migrations(dsn, schema="timestore")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO timestore.storage_targets (id, name, kind) VALUES ('st', 'st', 'local')")
        conn.execute("INSERT INTO timestore.datasets (id, slug, name) VALUES ('ds', 'ds', 'ds')")
        conn.execute(
            "INSERT INTO timestore.dataset_manifests (id, dataset_id, version, status) VALUES ('dm', 'ds', 1, 'published')"
        )
        for pid, start, end in [
            ("a", "-infinity", "infinity"),
            ("b", "0044-03-15 12:00:00+00 BC", "10000-01-01 00:00:00+00"),
            ("c", "2024-01-01 00:00:00.5+00", "2024-01-01 01:00:00+00"),
        ]:
            conn.execute(
                "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, partition_key,"
                " storage_target_id, file_format, file_path, start_time, end_time, metadata)"
                " VALUES (%s, 'ds', 'dm', '{}', 'st', 'parquet', %s, %s, %s, '[1]')",
                [pid, f"{pid}.parquet", start, end],
            )
        with conn.cursor() as cur:
            table = copy_partitions(cur, "timestore", None)
    rows = {r["id"]: (r["start_time"], r["end_time"]) for r in table.to_pylist()}
    far_past, far_future = datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert rows == {
        "a": (far_past, far_future),
        "b": (far_past, far_future),
        "c": (datetime(2024, 1, 1, 0, 0, 0, 500000), datetime(2024, 1, 1, 1)),
    }
