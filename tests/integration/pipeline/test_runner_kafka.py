"""The compactor runner against a real Kafka: exact results, kill -9 restarts, two instances, DLQ."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from support.catalog_model import APPEND_HEAVY, OPERATIONS, CatalogModel
from support.reference_consumer import replay
from walduck.config import WalduckSettings
from walduck.deltas import Delta
from walduck.kafka_readers import committed_reader
from walduck.kafka_security import start_client
from walduck.records import partition_of

pytestmark = pytest.mark.integration
PARTITIONS = 4


def build_model(seed: int, ops: int = 300) -> CatalogModel:
    rng = random.Random(seed)
    model = CatalogModel(seed=seed)
    for _ in range(6):
        model.create_dataset()
    model.run([rng.choice(APPEND_HEAVY + OPERATIONS) for _ in range(ops)])
    return model


async def produce(settings: WalduckSettings, records, extra: dict[int, list[bytes]] | None = None) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        futures = []
        for i, rec in enumerate(records):
            targets = (
                range(PARTITIONS) if rec.dataset_id is None else [partition_of(rec.dataset_id, PARTITIONS)]
            )
            for p in targets:
                futures.append(
                    await producer.send(
                        settings.changes_topic, rec.to_bytes(), key=rec.kafka_key(), partition=p
                    )
                )
            for raw in (extra or {}).get(i, []):
                futures.append(await producer.send(settings.changes_topic, raw, key=b"bad", partition=0))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def start_runner(
    settings: WalduckSettings, group: str, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    env = {
        **(extra_env or {}),
        **os.environ,
        "WALDUCK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "WALDUCK_CHANGES_TOPIC": settings.changes_topic,
        "WALDUCK_DELTAS_TOPIC": settings.deltas_topic,
        "WALDUCK_DLQ_TOPIC": settings.dlq_topic,
        "WALDUCK_COMPACTOR_GROUP_ID": group,
        "WALDUCK_COMPACTOR_METRICS_PORT": "0",
        "WALDUCK_COMPACTOR_SESSION_TIMEOUT_MS": "6000",
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from pipeline.cli import app; app()", "run"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def read_topic(settings: WalduckSettings, topic: str) -> list:
    consumer = committed_reader(settings)
    await start_client(consumer, settings)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for msgs in (await consumer.getmany(tp, timeout_ms=1000)).values():
                    out.extend(msgs)
        return out
    finally:
        await consumer.stop()


async def wait_committed(settings: WalduckSettings, group: str, limit_s: float = 90.0) -> None:
    """Until the group has committed every changes partition up to its end (or the timeout)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.changes_topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            committed = {tp: await consumer.committed(tp) for tp in tps}
            if all((committed[tp] or 0) >= ends[tp] for tp in tps):
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"not caught up: committed {committed}, ends {ends}")
    finally:
        await consumer.stop()


def assert_no_duplicates(deltas: list[Delta]) -> None:
    last: dict[tuple, int] = {}
    for d in deltas:
        mark = (d.src_partition, d.dataset_id, d.kind)
        assert d.src_offset_to > last.get(mark, -1), f"duplicate/regressing delta {mark} {d.src_offset_to}"
        last[mark] = d.src_offset_to


async def deltas_of(settings: WalduckSettings) -> list[Delta]:
    msgs = await read_topic(settings, settings.deltas_topic)
    out = []
    for m in msgs:
        d = Delta.from_bytes(m.value)
        assert m.partition == d.src_partition, "delta not co-partitioned"
        assert m.key == d.kafka_key()
        out.append(d)
    return out


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_runner_output_replays_to_the_visible_set(
    pipeline_topics: WalduckSettings, tmp_path: Path
) -> None:
    settings = pipeline_topics
    model = build_model(11)
    await produce(settings, model.records)
    group = f"g-{uuid.uuid4().hex[:6]}"
    proc = start_runner(settings, group, tmp_path / "runner.log")
    try:
        await wait_committed(settings, group)
    finally:
        stop(proc)
    deltas = await deltas_of(settings)
    assert_no_duplicates(deltas)
    assert replay(deltas) == model.visible()
    entries = sum(d.entry_count for d in deltas)
    print(f"records={len(model.records)} deltas={len(deltas)} entries={entries}")


def log_count(log: Path, text: str) -> int:
    return log.read_text().count(text) if log.exists() else 0


async def wait_for_log(log: Path, text: str, count: int, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if log_count(log, text) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not seen {count} times in {log}")


@pytest.mark.parametrize(
    "kills", [pytest.param(3, id="short"), pytest.param(10, id="long", marks=pytest.mark.long)]
)
async def test_kill_9_mid_stream_and_restart_is_exact(
    pipeline_topics: WalduckSettings, tmp_path: Path, kills: int
) -> None:
    """Each round: start a runner, wait for its partitions, produce a chunk while it runs, kill -9 it."""
    settings = pipeline_topics
    model = build_model(12, ops=150 * kills)
    group = f"g-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "runner.log"
    chunk = len(model.records) // (kills + 1) + 1
    rng = random.Random(5)
    for i in range(kills):
        proc = start_runner(settings, group, log)
        await wait_for_log(log, "restored from", PARTITIONS * (i + 1))
        producing = asyncio.ensure_future(produce(settings, model.records[i * chunk : (i + 1) * chunk]))
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await producing
    await produce(settings, model.records[kills * chunk :])
    proc = start_runner(settings, group, log)
    try:
        await wait_committed(settings, group)
    finally:
        stop(proc)
    deltas = await deltas_of(settings)
    assert_no_duplicates(deltas)
    assert replay(deltas) == model.visible()
    assert log.read_text().count("restored from") >= PARTITIONS * (kills + 1)


async def test_two_instances_share_partitions(pipeline_topics: WalduckSettings, tmp_path: Path) -> None:
    """Half the records before a second member joins, half once it holds partitions (so both work on the
    stream; all before it joined, the first member could finish alone on a loaded box)."""
    settings = pipeline_topics
    model = build_model(13)
    half = len(model.records) // 2
    await produce(settings, model.records[:half])
    group = f"g-{uuid.uuid4().hex[:6]}"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_runner(settings, group, logs[0])]
    try:
        await wait_for_log(logs[0], "restored from", 1)
        procs.append(start_runner(settings, group, logs[1]))
        await wait_for_log(logs[1], "restored from", 1)
        await produce(settings, model.records[half:])
        await wait_committed(settings, group)
    finally:
        for p in procs:
            stop(p)
    deltas = await deltas_of(settings)
    assert_no_duplicates(deltas)
    assert replay(deltas) == model.visible()


async def test_malformed_record_goes_to_dlq_and_nothing_is_lost(
    pipeline_topics: WalduckSettings, tmp_path: Path
) -> None:
    settings = pipeline_topics
    model = build_model(14, ops=100)
    bad = b'{"v": 1, "kind": "nonsense"'
    await produce(settings, model.records, extra={len(model.records) // 2: [bad]})
    group = f"g-{uuid.uuid4().hex[:6]}"
    proc = start_runner(settings, group, tmp_path / "runner.log")
    try:
        await wait_committed(settings, group)
    finally:
        stop(proc)
    deltas = await deltas_of(settings)
    assert replay(deltas) == model.visible()
    dlq = await read_topic(settings, settings.dlq_topic)
    assert [m.value for m in dlq] == [bad]
    headers = dict(dlq[0].headers)
    assert headers["reason"] == b"malformed" and headers["detail"].startswith(b"not JSON")
    assert headers["source"].startswith(f"{settings.changes_topic}/0@".encode())


async def test_incomplete_transaction_expires_and_other_datasets_stay_readable(
    pipeline_topics: WalduckSettings, tmp_path: Path
) -> None:
    """Issue 15: one valid change record with tx_size=2 and only tx_index=0 ever sent. Its partition must
    seal past it within the bound (the share in the DLQ with its reason), and a read-your-writes wait for a
    later commit of another dataset on the same partition is answered (not after the 30 s min_lsn timeout)."""
    from dataclasses import replace

    from sinks.context.consumer import DeltaConsumer
    from sinks.context.store import ContextStore
    from sinks.settings import SinkSettings

    settings = pipeline_topics
    model = CatalogModel(seed=15)
    a = model.create_dataset()
    b = model.create_dataset()
    while partition_of(b, PARTITIONS) != partition_of(a, PARTITIONS):
        b = model.create_dataset()
    model.heartbeat()
    before = len(model.records)
    model.append(a)
    stuck = replace(next(r for r in model.records[before:] if r.tx_index == 0), tx_size=2)
    del model.records[before:]  # only tx_index=0 of a's transaction is ever sent
    model.records.append(stuck)
    model.append(b)
    b_commit = model.records[-1].commit_lsn
    model.heartbeat()  # the watermark after b's commit: every partition claims it
    wait_lsn = model.records[-1].commit_lsn
    await produce(settings, model.records)
    produced_at = time.monotonic()

    group = f"g-{uuid.uuid4().hex[:6]}"
    proc = start_runner(
        settings,
        group,
        tmp_path / "runner.log",
        {"WALDUCK_COMPACTOR_SHARE_EXPIRE_S": "3", "WALDUCK_COMPACTOR_SHARE_EXPIRE_RECORDS": "100000"},
    )
    sink = SinkSettings(
        context_path=tmp_path / "ctx" / "context.duckdb", view_refresh_interval_s=0.0, sink_bootstrap="replay"
    )
    store = ContextStore(sink, settings.model_copy(update={"storage_root": tmp_path / "storage"}))
    store.open()
    consumer = DeltaConsumer(store)
    consuming = asyncio.create_task(consumer.run())
    try:
        answered = await store.wait_for_lsn(wait_lsn, 30.0)
        waited = time.monotonic() - produced_at
        assert answered, "a min_lsn read for another dataset waited past the 30 s timeout"
        await wait_committed(settings, group, limit_s=60)
    finally:
        await consumer.stop()
        await asyncio.wait_for(consuming, 30)
        store.close()
        stop(proc)
    print(f"min_lsn wait answered after {waited:.1f} s (bound 3 s)")
    assert waited < 25
    deltas = await deltas_of(settings)
    visible = replay(deltas)
    assert any(ds == b for ds, _ in visible), "the later transaction of the other dataset never sealed"
    assert not any(ds == a for ds, _ in visible), "a half transaction was published"
    assert max(d.lsn_to for d in deltas if d.dataset_id == b) == b_commit
    dlq = await read_topic(settings, settings.dlq_topic)
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert headers["reason"] == b"incomplete_transaction_expired"
    assert headers["detail"].startswith(
        b"incomplete_transaction_expired: 1 of 2 record(s) of key " + a.encode()
    )
    assert dlq[0].value == stuck.to_bytes()
