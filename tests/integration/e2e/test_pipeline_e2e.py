"""End to end on real PostgreSQL + Kafka: snapshot, stream, every transaction shape, verify, SQL == files."""

from __future__ import annotations

import asyncio

import pytest

from stack.workload.generator import ALL_SHAPES_MIX, Workload
from support.stacks import run_workload
from support.truth import assert_stack_matches_postgres, run_verify

ALL_SHAPES = ALL_SHAPES_MIX


@pytest.mark.parametrize("mode", ["incremental", "full-scan"])
async def test_snapshot_then_stream_every_shape_zero_drift(make_stack, mode: str) -> None:
    """Full-scan mode (the emergency rollback) must pass the same correctness checks as incremental mode."""
    stack = await make_stack(WALDUCK_CONTEXT_MODE=mode)
    # a catalog that already holds data before walduck starts (initial snapshot)
    run_workload(stack, 7, datasets=3, days=3, partitions_per_shard=4, max_commits=30, mix=ALL_SHAPES)
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    # and keeps changing while it runs
    summary = await asyncio.to_thread(
        run_workload, stack, 8, datasets=4, days=3, partitions_per_shard=4, max_commits=80, mix=ALL_SHAPES
    )
    assert summary.commits >= 80
    # SQL answers equal the Parquet truth; the deltas themselves, replayed into a plain dict, equal PostgreSQL's
    # visible partition sets and values
    fields = ("file_path", "row_count", "start_time", "end_time", "manifest_id")
    await assert_stack_matches_postgres(stack, 4, fields)
    verify = await asyncio.to_thread(run_verify, stack)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_read_your_writes_min_lsn_50_of_50(make_stack) -> None:
    stack = await make_stack()
    s = stack.settings
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    with Workload(s.pg_dsn, s.catalog_schema, s.storage_root, seed=11) as wl:
        (dataset_id,) = wl.ensure_datasets(1)
        slug = wl.dataset(dataset_id)["slug"]
        from sinks.context.naming import sanitize_view_name

        view = sanitize_view_name(slug)
        expected = 0
        for i in range(50):
            result = await asyncio.to_thread(wl.ingest, dataset_id, i % 3)
            expected += result.rows
            resp = await asyncio.to_thread(
                stack.read,
                f'SELECT count(*) AS n FROM timestore."{view}"',
                min_lsn=result.lsn,
                scopes="timestore:admin,timestore:sql:read,timestore:read",
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["rows"][0]["n"] == expected, f"write {i} not visible at its LSN"
        # a dataset created and written just now is readable at the writer's LSN (IAM and planning must
        # see the dataset list as of min_lsn, not as of the request's arrival)
        for j in range(5):
            fresh = wl.create_dataset(f"ryw-new-{j}", read_scopes=["timestore:read"]).dataset_id
            result = await asyncio.to_thread(wl.ingest, fresh, 0)
            resp = await asyncio.to_thread(
                stack.read,
                f'SELECT count(*) AS n FROM timestore."{sanitize_view_name(f"ryw-new-{j}")}"',
                min_lsn=result.lsn,
                scopes="timestore:read,timestore:sql:read",
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["rows"][0]["n"] == result.rows
