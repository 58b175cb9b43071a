"""A catalog that already holds many partitions is snapshotted, bootstraps a context, then follows the stream
with zero drift (issue 5: 100k partitions in the long variant; 20k by default to keep CI fast)."""

from __future__ import annotations

import asyncio
import time

import pytest

from stack.workload.bulk import bulk_load
from support.stacks import run_workload
from support.truth import assert_sql_matches_truth, run_verify, truth_from_postgres


async def _bootstrap_then_stream(make_stack, partitions: int) -> dict[str, float]:
    stack = await make_stack()
    s = stack.settings
    loaded = time.monotonic()
    await asyncio.to_thread(
        bulk_load, s.pg_dsn, s.catalog_schema, s.storage_root, datasets=8, partitions=partitions, days=20
    )
    loaded = time.monotonic() - loaded
    started = time.monotonic()
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 600)
    await asyncio.to_thread(stack.wait_caught_up, None, 600)
    bootstrap_s = time.monotonic() - started
    resp = stack.read(
        "SELECT sum(partition_count) AS p FROM timestore_runtime.datasets", scopes="timestore:admin"
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["rows"][0]["p"] == partitions
    # then it follows the stream
    await asyncio.to_thread(
        run_workload, stack, 3, datasets=2, days=3, partitions_per_shard=4, max_commits=40
    )
    await asyncio.to_thread(stack.wait_caught_up, None, 300)
    verify = await asyncio.to_thread(run_verify, stack)
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-2000:]
    truth = await asyncio.to_thread(truth_from_postgres, stack)
    await asyncio.to_thread(assert_sql_matches_truth, stack, truth)
    figures = {
        "partitions": partitions,
        "bulk_load_s": round(loaded, 1),
        "bootstrap_s": round(bootstrap_s, 1),
    }
    print(f"\nbootstrap figures: {figures}")
    return figures


async def test_20k_partition_catalog_bootstraps_then_streams(make_stack) -> None:
    await _bootstrap_then_stream(make_stack, 20_000)


@pytest.mark.long
async def test_100k_partition_catalog_bootstraps_then_streams(make_stack) -> None:
    await _bootstrap_then_stream(make_stack, 100_000)
