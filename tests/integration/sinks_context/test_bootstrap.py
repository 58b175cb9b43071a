"""A new replica boots from PostgreSQL, not by replaying the deltas topic; a shard whose history was deleted
(retention) is rebuilt from PostgreSQL (issue 15). Real PostgreSQL and Kafka; the oracle is PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

import sinks.context.build as build_module
from sinks.context.consumer import DeltaConsumer
from sinks.context.store import ContextStore
from sinks.settings import SinkSettings
from sinks.verify import verify
from support.deltas_topic import produce_deltas
from support.obs_catalog import insert_obs_partition, obs_catalog_with_one_file
from walduck import metrics

pytestmark = pytest.mark.integration


async def _until(cond: Any, task: asyncio.Task[None], limit_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        assert not task.done(), task
        await asyncio.sleep(0.05)


def _ids(store: ContextStore) -> list[str]:
    return sorted(r["partitionId"] for r in store.partition_index("ds-obs"))


def _rebuilt_shards() -> float:
    return metrics.REBUILDS.labels(scope="shard", result="ok")._value.get()


async def test_new_replica_boots_from_postgresql_and_loses_no_delta_around_the_snapshot(
    fresh_db, fresh_topics, factory, tmp_path, monkeypatch
):
    dsn, wd, p1 = await obs_catalog_with_one_file(fresh_db, fresh_topics, factory)
    # the history: what a replay from offset 0 would apply (3 deltas)
    history = [factory.create_dataset(0, "obs"), factory.delta(0, "ds-obs", upserts=[p1])]
    history.append(factory.delta(0, "ds-obs", upserts=[p1]))
    await produce_deltas(wd, history)

    p2, p3 = factory.write_file("obs", 1, 4), factory.write_file("obs", 2, 5)
    real_read = build_module.read_catalog
    reads: list[str] = []

    def interleaved_read(*args: Any, **kwargs: Any) -> Any:
        # E was recorded before this call. p2 commits and its delta is produced now, BEFORE the snapshot
        # (the snapshot holds p2 and its delta lies at an offset >= E: applied again, harmlessly) ...
        insert_obs_partition(dsn, p2)
        asyncio.run(produce_deltas(wd, [factory.delta(0, "ds-obs", upserts=[p2])]))
        snap = real_read(*args, **kwargs)
        # ... and p3 commits AFTER the snapshot: only its delta (offset >= E) brings it
        insert_obs_partition(dsn, p3)
        asyncio.run(produce_deltas(wd, [factory.delta(0, "ds-obs", upserts=[p3])]))
        reads.append("read")
        return snap

    monkeypatch.setattr(build_module, "read_catalog", interleaved_read)
    sink = SinkSettings(context_path=tmp_path / "ctx" / "context.duckdb", view_refresh_interval_s=0.0)
    store = ContextStore(sink, wd)
    store.open()
    before = _rebuilt_shards()
    try:
        consumer = DeltaConsumer(store)
        task = asyncio.create_task(consumer.run())
        try:
            await _until(lambda: consumer.applied >= 2, task)
            await asyncio.sleep(0.5)  # nothing else arrives
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 30)
        assert reads == ["read"]
        assert _ids(store) == sorted([p1["id"], p2["id"], p3["id"]])
        assert store.dataset("ds-obs").total_rows == 12
        # the history below E was never replayed: only the two deltas produced after E were applied
        assert consumer.applied == 2
        prog = store.progress()[0]
        assert prog.bootstrapped and prog.deltas_offset == len(history) + 1
        assert _rebuilt_shards() == before + 1
    finally:
        store.close()
    assert verify(wd, sink) == []


async def test_shard_whose_history_was_deleted_is_rebuilt_from_postgresql(
    fresh_db, fresh_topics, factory, tmp_path, caplog
):
    dsn, wd, p1 = await obs_catalog_with_one_file(fresh_db, fresh_topics, factory)
    await produce_deltas(wd, [factory.create_dataset(0, "obs"), factory.delta(0, "ds-obs", upserts=[p1])])
    sink = SinkSettings(context_path=tmp_path / "ctx" / "context.duckdb", view_refresh_interval_s=0.0)

    store = ContextStore(sink, wd)
    store.open()
    try:
        consumer = DeltaConsumer(store)
        task = asyncio.create_task(consumer.run())
        try:
            await _until(lambda: store.progress()[0].bootstrapped and _ids(store) == [p1["id"]], task)
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 30)
        stored = store.progress()[0].deltas_offset
    finally:
        store.close()

    # while the replica is down: p2 added, p1 deleted, their deltas produced ... and then deleted by retention
    p2 = factory.write_file("obs", 1, 4)
    insert_obs_partition(dsn, p2)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM timestore.dataset_partitions WHERE id = %s", [p1["id"]])
    await produce_deltas(
        wd,
        [factory.delta(0, "ds-obs", upserts=[p2]), factory.delta(0, "ds-obs", deletes=[p1["id"]])],
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=wd.kafka_bootstrap)
    await admin.start()
    try:
        tp = TopicPartition(wd.deltas_topic, 0)
        low = await admin.delete_records({tp: RecordsToDelete(stored + 3)})
        assert low[tp] == stored + 3  # the log now starts after every delta the replica has not seen
    finally:
        await admin.close()

    store = ContextStore(sink, wd)
    store.open()
    before = _rebuilt_shards()
    caplog.set_level("WARNING", logger="sinks.context.consumer")
    try:
        assert _ids(store) == [p1["id"]]  # what it held when it stopped
        consumer = DeltaConsumer(store)
        task = asyncio.create_task(consumer.run())
        try:
            await _until(lambda: _rebuilt_shards() == before + 1, task)
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 30)
        assert _ids(store) == [p2["id"]], "the deleted history must come back from PostgreSQL"
        assert store.dataset("ds-obs").total_rows == 4
        assert store.progress()[0].deltas_offset == stored + 2
        assert consumer.applied == 0
        assert any("below the log start offset" in r.getMessage() for r in caplog.records)
    finally:
        store.close()
    assert verify(wd, sink) == []
