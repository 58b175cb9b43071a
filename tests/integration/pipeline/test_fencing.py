"""Issue 15: a compactor member that lost its partitions cannot write deltas (Kafka transactions).

Each changes partition has its own transactional id; the owner's producer start fences the previous owner.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.compaction import Compactor
from pipeline.runner import CompactorRunner, PartitionWork
from pipeline.settings import CompactorSettings
from support.compaction_runs import assert_no_duplicates, feed_windows
from support.compactor_kafka import (
    PARTITIONS,
    build_model,
    deltas_of,
    produce,
    start_runner,
    stop,
    wait_committed,
    wait_for_log,
)
from support.reference_consumer import replay
from walduck.config import WalduckSettings
from walduck.metrics import COMPACTOR_FENCED


async def committed_offset(settings: WalduckSettings, group: str, partition: int) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(settings.changes_topic, partition))
    finally:
        await consumer.stop()


async def test_a_fenced_owner_commits_neither_deltas_nor_offsets(pipeline_topics: WalduckSettings) -> None:
    """Old owner A holds a sealed window of partition 0; new owner B starts the partition's transactional
    producer (as its assignment does); A's commit of the window is refused and nothing of it is visible."""
    settings = pipeline_topics
    group = f"g-{uuid.uuid4().hex[:6]}"
    knobs = CompactorSettings(group_id=group, metrics_port=0)
    model = build_model(21, ops=60)
    records = model.records
    old = CompactorRunner(settings, knobs)
    compactor = Compactor(0)
    deltas = feed_windows(compactor, records)
    assert deltas, "the window gave no delta: the test would prove nothing"
    work = PartitionWork(compactor, -1, producer=await old._start_producer(0))
    old.work[0] = work
    new = CompactorRunner(settings, knobs)
    newer = await new._start_producer(0)  # the new owner's assignment
    try:
        fenced_before = COMPACTOR_FENCED._value.get()
        assert await old._commit_window(0, work, deltas) is False
        assert COMPACTOR_FENCED._value.get() == fenced_before + 1
        assert 0 not in old.work, "a fenced member keeps the partition's state"
        assert await deltas_of(settings) == [], "the fenced owner's deltas are visible to read_committed"
        assert await committed_offset(settings, group, 0) is None, "the fenced owner committed offsets"
        # the new owner's transaction goes through
        again = Compactor(0)
        window = feed_windows(again, records)
        mine = PartitionWork(again, -1, producer=newer)
        new.work[0] = mine
        assert await new._commit_window(0, mine, window) is True
        assert [d.to_bytes() for d in await deltas_of(settings)] == [d.to_bytes() for d in deltas]
        assert await committed_offset(settings, group, 0) == again.covered_to + 1
    finally:
        await newer.stop()


async def test_a_paused_member_past_its_session_writes_nothing(
    pipeline_topics: WalduckSettings, tmp_path: Path
) -> None:
    """Member A is stopped (SIGSTOP) past its session timeout while holding every partition; B takes them
    over and processes everything; A is resumed while records keep arriving. The deltas topic
    (read_committed) holds each window once and replays to the model's visible set."""
    settings = pipeline_topics
    model = build_model(22, ops=400)
    third = len(model.records) // 3
    group = f"g-{uuid.uuid4().hex[:6]}"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = start_runner(settings, group, logs[0])
    b = None
    try:
        await wait_for_log(logs[0], "restored from", PARTITIONS)
        await produce(settings, model.records[:third])
        await asyncio.sleep(0.5)
        a.send_signal(signal.SIGSTOP)
        # records A will see on resume, before it learns it lost its partitions
        await produce(settings, model.records[third : 2 * third])
        b = start_runner(settings, group, logs[1])
        await wait_for_log(logs[1], "restored from", PARTITIONS, limit_s=90)
        # (no wait for B to catch up here: a chunk boundary may cut a transaction, whose rest comes later)
        await asyncio.sleep(3)
        a.send_signal(signal.SIGCONT)
        await produce(settings, model.records[2 * third :])
        await asyncio.sleep(8)
        await wait_committed(settings, group)
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
        stop(a)
        if b is not None:
            stop(b)
    deltas = await deltas_of(settings)
    assert_no_duplicates(deltas)
    assert replay(deltas) == model.visible()
    a_log = logs[0].read_text()
    print("A fenced windows:", a_log.count("fenced by a newer owner"))
