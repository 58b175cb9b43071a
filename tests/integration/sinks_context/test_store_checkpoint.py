"""Idle-time checkpoints of the context file (real DuckDB, real files; the consumer test uses real Kafka).

An apply that takes DuckDB's WAL past ``checkpoint_threshold`` pays for the checkpoint (docs/performance.md,
"apply"); the deltas consumer therefore checkpoints when idle. These tests pin what that must not break:
nothing applied is lost, a reader's open transaction is respected, and the consumer really does it.
"""

from __future__ import annotations

import asyncio

import pytest

from sinks.context.consumer import DeltaConsumer
from sinks.context.store import ContextStore
from support.deltas_topic import produce_deltas
from walduck import metrics


def _fill(store: ContextStore, factory, apply) -> int:
    apply(factory.create_dataset(0, "obs"))
    for h in range(6):
        apply(factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", h, 3)]))
    return store.dataset("ds-obs").total_rows


def test_checkpoint_folds_the_wal_and_keeps_every_change(ctx_settings, factory) -> None:
    sink, wd = ctx_settings
    store = ContextStore(sink.model_copy(update={"duckdb_checkpoint_threshold": "1GB"}), wd)
    store.open()
    try:
        with store.reader() as cur:
            assert cur.execute("SELECT current_setting('checkpoint_threshold')").fetchone()[0] in (
                "1.0 GB",
                "1.0 GiB",
                "953.6 MiB",
            )
        offsets = iter(range(100))
        rows = _fill(store, factory, lambda d: store.apply(d, 0, next(offsets)))
        wal = store.wal_bytes()
        assert wal > 0, "the applies should sit in the WAL below a 1 GB threshold"
        assert store.checkpoint(min_wal_bytes=wal + 1) is None  # below the minimum: nothing done
        assert store.wal_bytes() == wal
        assert store.checkpoint() is True
        assert store.wal_bytes() < wal
        assert store.dataset("ds-obs").total_rows == rows
    finally:
        store.close()
    reopened = ContextStore(sink, wd)
    reopened.open()
    try:
        assert reopened.dataset("ds-obs").total_rows == rows
        assert reopened.progress()[0].deltas_offset == 6
    finally:
        reopened.close()


def test_checkpoint_beside_a_readers_open_transaction(ctx_settings, factory) -> None:
    """DuckDB 2.0 checkpoints beside an open read transaction (older versions refused: ``False``, retried at the
    next idle poll); either way the reader keeps its snapshot and nothing applied is lost."""
    sink, wd = ctx_settings
    store = ContextStore(sink.model_copy(update={"duckdb_checkpoint_threshold": "1GB"}), wd)
    store.open()
    try:
        offsets = iter(range(100))
        rows = _fill(store, factory, lambda d: store.apply(d, 0, next(offsets)))
        busy = metrics.CONTEXT_CHECKPOINTS.labels(result="busy")._value.get()
        with store.reader() as cur:
            cur.begin()
            seen = cur.execute("SELECT count(*) FROM wd.partitions").fetchone()[0]
            done = store.checkpoint()
            assert done in (True, False)
            store.apply(
                factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", 9, 3)]), 0, next(offsets)
            )
            assert cur.execute("SELECT count(*) FROM wd.partitions").fetchone()[0] == seen  # its snapshot
            cur.commit()
        assert metrics.CONTEXT_CHECKPOINTS.labels(result="busy")._value.get() == busy + (not done)
        assert store.checkpoint() is True
        assert store.dataset("ds-obs").total_rows == rows + 3
    finally:
        store.close()


@pytest.mark.integration
async def test_consumer_checkpoints_when_idle(fresh_topics, factory, ctx_settings) -> None:
    wd = await fresh_topics(partitions=2)
    wd = wd.model_copy(update={"storage_root": factory.root})
    sink, _ = ctx_settings
    sink = sink.model_copy(
        update={
            "duckdb_checkpoint_threshold": "1GB",
            "checkpoint_idle_s": 0.3,
            "checkpoint_idle_min_bytes": 1,
            "sink_bootstrap": "replay",  # deltas fed by hand, no catalog to build from
        }
    )
    deltas = [factory.create_dataset(0, "obs")]
    deltas += [factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", h, 2)]) for h in range(4)]
    await produce_deltas(wd, deltas)
    store = ContextStore(sink, wd)
    store.open()
    done_before = metrics.CONTEXT_CHECKPOINTS.labels(result="done")._value.get()
    try:
        consumer = DeltaConsumer(store)
        task = asyncio.create_task(consumer.run())
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while metrics.CONTEXT_CHECKPOINTS.labels(result="done")._value.get() == done_before:
                assert asyncio.get_running_loop().time() < deadline, "no idle checkpoint within 30 s"
                assert not task.done(), task
                await asyncio.sleep(0.05)
            assert consumer.applied == len(deltas)
            assert store.dataset("ds-obs").total_rows == 8
            assert store.wal_bytes() < 4096  # folded into the file (an empty WAL may keep a header)
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 30)
    finally:
        store.close()
