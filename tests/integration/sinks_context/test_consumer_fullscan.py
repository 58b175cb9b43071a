"""Kafka-backed: the deltas consumer resumes from stored offsets; full-scan mode equals incremental; verify."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from sinks.context.consumer import DeltaConsumer
from sinks.context.store import ContextStore
from sinks.settings import SinkSettings
from sinks.verify import verify
from support.obs_catalog import seed_obs_catalog
from walduck import metrics
from walduck.config import ContextMode

pytestmark = pytest.mark.integration


async def _run_until(consumer: DeltaConsumer, cond, limit_s: float = 30.0) -> None:
    task = asyncio.create_task(consumer.run())
    try:
        deadline = asyncio.get_running_loop().time() + limit_s
        while not cond():
            assert asyncio.get_running_loop().time() < deadline, "consumer did not catch up"
            assert not task.done(), task
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 30)


async def test_consumer_applies_resumes_and_dead_letters(fresh_topics, factory, tmp_path):
    wd = await fresh_topics(partitions=2)
    wd = wd.model_copy(update={"storage_root": factory.root})
    sink = SinkSettings(
        context_path=tmp_path / "c" / "ctx.duckdb", view_refresh_interval_s=0.0, sink_bootstrap="replay"
    )
    deltas = [
        factory.create_dataset(0, "obs"),
        factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", h, 4) for h in range(3)]),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=wd.kafka_bootstrap)
    await producer.start()
    try:
        for d in deltas:
            await producer.send_and_wait(wd.deltas_topic, d.to_bytes(), key=d.kafka_key(), partition=0)
        await producer.send_and_wait(wd.deltas_topic, b"{not json", partition=1)
        await producer.send_and_wait(
            wd.deltas_topic, deltas[1].to_bytes(), partition=0
        )  # re-produced: duplicate
    finally:
        await producer.stop()

    store = ContextStore(sink, wd)
    store.open()
    try:
        consumer = DeltaConsumer(store)
        await _run_until(
            consumer, lambda: consumer.applied + consumer.duplicates + consumer.dead_lettered >= 4
        )
        assert (consumer.applied, consumer.duplicates, consumer.dead_lettered) == (2, 1, 1)
        assert store.dataset("ds-obs").total_rows == 12
        assert store.progress()[0].deltas_offset == 2 and store.progress()[0].bootstrapped
    finally:
        store.close()

    dlq = AIOKafkaConsumer(wd.dlq_topic, bootstrap_servers=wd.kafka_bootstrap, auto_offset_reset="earliest")
    await dlq.start()
    try:
        rec = await asyncio.wait_for(dlq.getone(), 20)
        assert dict(rec.headers)["reason"] == b"malformed" and rec.value == b"{not json"
    finally:
        await dlq.stop()

    # warm restart: resumes after the stored offsets, applies nothing again, no rebuild
    rebuilds_before = sum(
        s.value for m in metrics.REBUILDS.collect() for s in m.samples if s.name.endswith("_total")
    )
    store = ContextStore(sink, wd)
    store.open()
    try:
        consumer = DeltaConsumer(store)
        t0 = time.monotonic()  # let it poll both partitions for 2 s
        await _run_until(consumer, lambda: time.monotonic() - t0 > 2.0, limit_s=10)
        await asyncio.sleep(0)
        assert (consumer.applied, consumer.duplicates) == (0, 0)
        assert store.dataset("ds-obs").total_rows == 12
    finally:
        store.close()
    assert sum(
        s.value for m in metrics.REBUILDS.collect() for s in m.samples if s.name.endswith("_total")
    ) == (rebuilds_before)


def test_full_scan_mode_gives_the_same_answers_and_verify(fresh_db, factory, ctx_settings, tmp_path):
    dsn = fresh_db()
    files = [factory.write_file("obs", h, 5 + h) for h in range(4)]
    seed_obs_catalog(dsn, files)
    sink, wd = ctx_settings
    wd = wd.model_copy(update={"pg_dsn": dsn})
    incremental = ContextStore(sink, wd)
    incremental.open()
    try:
        incremental.apply(factory.create_dataset(0, "obs"), 0, 0)
        incremental.apply(factory.delta(0, "ds-obs", upserts=files), 0, 1)
        expected = _answers(incremental)
    finally:
        incremental.close()
    assert expected == (sum(5 + h for h in range(4)), pytest.approx(expected[1]))

    full_wd = wd.model_copy(update={"context_mode": ContextMode.FULL_SCAN})
    full_sink = SinkSettings(context_path=tmp_path / "full" / "ctx.duckdb", view_refresh_interval_s=0.0)
    full = ContextStore(full_sink, full_wd)
    full.open()
    try:
        # the delta's content is ignored: it only names the dataset to re-read from PostgreSQL
        assert full.apply(factory.delta(0, "ds-obs", upserts=files[:1]), 0, 0)
        assert _answers(full) == expected
        assert full.dataset("ds-obs").partition_count == 4
        assert full.progress()[0].deltas_offset == 0
    finally:
        full.close()

    assert verify(wd, sink) == []
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM timestore.dataset_partitions WHERE id = %s", [files[2]["id"]])
    drifts = verify(wd, sink)
    assert [(d.dataset_id, d.manifest_shard, d.partition_id, d.kind) for d in drifts] == [
        ("ds-obs", "2024-01-01", files[2]["id"], "extra")
    ]


def _answers(store: ContextStore) -> tuple:
    sql, _ = store.relation_sql("ds-obs")
    with store.reader() as cur:
        return cur.execute(f"SELECT count(*), sum(value) FROM ({sql}) t").fetchone()
