"""Debezium as a source (issue 18), end to end on the real services: catalog workload -> the real Debezium
PostgreSQL connector (Kafka Connect standalone) -> walduck's Debezium source (``WALDUCK_SOURCE=debezium``) ->
compactor -> query service; the compactor is killed with SIGKILL twice mid-stream and walduck's
Debezium source once. Afterwards zero drift by
``walduck verify`` and by the Parquet recount (SQL answers == DuckDB over the visible files)."""

from __future__ import annotations

import asyncio
import time

import pytest

from faults.faultkit import BackgroundWorkload, assert_zero_drift
from stack.local import Stack
from stack.workload.generator import ALL_SHAPES_MIX
from support.debezium import start_debezium
from support.stacks import run_workload


@pytest.mark.parametrize("snapshot_mode", ["no_data", "initial"])
async def test_debezium_topics_feed_the_contexts_with_zero_drift(make_stack, tmp_path, snapshot_mode) -> None:
    """``initial``: the catalog already holds data when Debezium starts; its snapshot reads come first."""
    stack: Stack = await make_stack()
    if snapshot_mode == "initial":
        run_workload(
            stack, 17, datasets=3, days=2, partitions_per_shard=4, max_commits=30, mix=ALL_SHAPES_MIX
        )
    dbz, prefix = await asyncio.to_thread(start_debezium, stack, tmp_path / "debezium", snapshot_mode)
    try:
        stack.extra_env.update(
            {
                "WALDUCK_SOURCE": "debezium",
                "WALDUCK_DEBEZIUM_TOPIC_PREFIX": prefix,
                "WALDUCK_DEBEZIUM_SNAPSHOT_MODE": snapshot_mode,
            }
        )
        stack.start()
        await asyncio.to_thread(stack.wait_ready, 180)
        workload = BackgroundWorkload(stack, seed=18, duration=20, rate=5).start()
        # SIGKILL mid-stream: the compactor twice, and walduck's Debezium source once
        for name, pause in (("compactor", 4.0), ("connector", 3.0), ("compactor", 4.0)):
            await asyncio.sleep(pause)
            dbz.check_alive()
            comp = stack.components[name]
            assert comp.alive, comp.tail()
            comp.kill()
            await asyncio.sleep(0.5)
            comp.start()
        summary = await asyncio.to_thread(workload.join, 90)
        assert summary.commits >= 20, summary
        began = time.monotonic()
        report = await asyncio.to_thread(assert_zero_drift, stack, 180)
        assert report.datasets >= 1 and report.rows_checked > 0
        assert not dbz.errors(), dbz.errors()[-2000:]
        print(
            f"[debezium {snapshot_mode}] commits={summary.commits} datasets={report.datasets} rows={report.rows_checked} "
            f"caught_up_s={time.monotonic() - began:.1f}"
        )
    finally:
        stack.stop()
        dbz.stop()
