"""Issue 16 acceptance: each finding's case goes through the running pipeline and ``walduck verify`` reports
zero drift (real PostgreSQL, Kafka, connector, compactor and query service processes)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from support.stacks import run_workload
from support.truth import deltas_replayed, run_verify

pytestmark = pytest.mark.integration

EXACT_STATS = (
    '{"big": 123456789012345678901234567890, "pi": 3.141592653589793238462643383279502884197,'
    ' "cents": 0.10000000000000000000001, "u64over": 18446744073709551616, "huge": 1e400}'
)


async def test_each_finding_through_the_pipeline_zero_drift(make_stack) -> None:
    stack = await make_stack()
    s = stack.settings
    run_workload(stack, 16, datasets=2, days=1, partitions_per_shard=2, duration=30, max_commits=6)
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    schema = s.catalog_schema
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        (ds, dm, st, part) = conn.execute(
            f"SELECT p.dataset_id, p.manifest_id, p.storage_target_id, p.id FROM {schema}.dataset_partitions p"
            f" JOIN {schema}.dataset_manifests m ON m.id = p.manifest_id AND m.status = 'published' LIMIT 1"
        ).fetchone()
        # findings 1, 2: exact jsonb (1e400 too) on insert, update, delete
        conn.execute(
            f"UPDATE {schema}.dataset_partitions SET column_statistics = %s WHERE id = %s",
            [EXACT_STATS, part],
        )
        conn.execute(f"UPDATE {schema}.dataset_partitions SET row_count = 4242 WHERE id = %s", [part])
        # findings 3, 5: instants with no ISO 8601 form, metadata of odd shapes, in a published manifest
        for i, (start, meta) in enumerate(
            [("-infinity", "[1, 2]"), ("0001-01-01 00:30:00+01", '"text"'), ("10000-01-01 00:00:00+00", "5")]
        ):
            conn.execute(
                f"INSERT INTO {schema}.dataset_partitions (id, dataset_id, manifest_id, partition_key,"
                " storage_target_id, file_format, file_path, start_time, end_time, row_count, metadata,"
                " column_statistics, manifest_shard)"
                " SELECT %s, %s, %s, %s, %s, 'parquet', %s, %s, 'infinity', 1, %s, %s, manifest_shard"
                f" FROM {schema}.dataset_manifests WHERE id = %s",
                [f"odd-{i}", ds, dm, EXACT_STATS, st, f"odd/{i}.parquet", start, meta, EXACT_STATS, dm],
            )
        conn.execute(f"DELETE FROM {schema}.dataset_partitions WHERE id = 'odd-0'")
        # finding 4: a 2.2 MB TOASTed name, then a status update (the record carried it twice)
        conn.execute(f"UPDATE {schema}.datasets SET name = %s WHERE id = %s", ["n" * 2_200_000, ds])
        conn.execute(f"UPDATE {schema}.datasets SET status = 'inactive' WHERE id = %s", [ds])
    await asyncio.to_thread(stack.wait_caught_up, None, 180)
    verify = await asyncio.to_thread(run_verify, stack)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    replayed = await deltas_replayed(stack)
    visible = {pid: row for (d, _), parts in replayed.items() if d == ds for pid, row in parts.items()}
    assert {"odd-1", "odd-2"} <= set(visible) and "odd-0" not in visible
    assert visible[part]["row_count"] == 4242
    assert visible["odd-1"]["start_time"] == "0000-12-31T23:30:00+00:00"
    assert visible["odd-2"]["start_time"] == "+10000-01-01T00:00:00+00:00"
    assert visible["odd-2"]["end_time"] == "infinity"
