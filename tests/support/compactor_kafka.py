"""The compactor against a real Kafka: the set-up the tests of ``tests/integration/pipeline`` share.

A model history produced to the changes topic as the connector would (:func:`produce`), compactor runners
started as the ``walduck compactor run`` process (:func:`start_runner`, :func:`stop`), and what they wrote
read back (:func:`read_topic` with :func:`walduck.kafka_readers.committed_reader`, :func:`deltas_of`) once
their group committed everything (:func:`wait_committed`). Topics come from the ``pipeline_topics`` fixture
(``tests/integration/pipeline/conftest.py``), :data:`PARTITIONS` partitions each.
"""

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

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from support.catalog_model import APPEND_HEAVY, OPERATIONS, CatalogModel
from walduck.config import WalduckSettings
from walduck.deltas import Delta
from walduck.kafka_readers import committed_reader
from walduck.kafka_security import start_client
from walduck.records import partition_of

PARTITIONS = 4


def build_model(seed: int, ops: int = 300) -> CatalogModel:
    """Six datasets, then ``ops`` random operations (append-heavy)."""
    rng = random.Random(seed)
    model = CatalogModel(seed=seed)
    for _ in range(6):
        model.create_dataset()
    model.run([rng.choice(APPEND_HEAVY + OPERATIONS) for _ in range(ops)])
    return model


async def produce(settings: WalduckSettings, records, extra: dict[int, list[bytes]] | None = None) -> None:
    """``records`` to the changes topic, each to its key's partition (a global record to every partition);
    ``extra[i]``: raw values sent to partition 0 after record ``i``."""
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


def new_group() -> str:
    return f"g-{uuid.uuid4().hex[:6]}"


def start_runner(
    settings: WalduckSettings,
    group: str,
    log: Path,
    extra_env: dict[str, str] | None = None,
    *,
    instance: str | None = None,
    metrics_port: int = 0,
    session_timeout_ms: int | None = 6000,
) -> subprocess.Popen:
    """A ``walduck compactor run`` process of ``group`` on the settings' topics, its output appended to
    ``log``: a static member when ``instance`` is given, the session timeout left to the compactor's default
    (and the environment) when ``session_timeout_ms`` is None; ``extra_env`` goes on top."""
    env = {
        **os.environ,
        "WALDUCK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "WALDUCK_CHANGES_TOPIC": settings.changes_topic,
        "WALDUCK_DELTAS_TOPIC": settings.deltas_topic,
        "WALDUCK_DLQ_TOPIC": settings.dlq_topic,
        "WALDUCK_COMPACTOR_GROUP_ID": group,
        "WALDUCK_COMPACTOR_METRICS_PORT": str(metrics_port),
    }
    if instance is not None:
        env["WALDUCK_COMPACTOR_GROUP_INSTANCE_ID"] = instance
    if session_timeout_ms is not None:
        env["WALDUCK_COMPACTOR_SESSION_TIMEOUT_MS"] = str(session_timeout_ms)
    env.update(extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-c", "from pipeline.cli import app; app()", "run"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_count(log: Path, text: str) -> int:
    return log.read_text().count(text) if log.exists() else 0


async def wait_for_log(log: Path, text: str, count: int, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if log_count(log, text) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not seen {count} times in {log}")


async def read_topic(settings: WalduckSettings, topic: str) -> list:
    """Every committed record of ``topic``, partition by partition."""
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


async def caught_up(settings: WalduckSettings, group: str) -> bool:
    """Whether the group has committed every changes partition to its end (a short look)."""
    try:
        await wait_committed(settings, group, limit_s=0.5)
        return True
    except AssertionError:
        return False


async def deltas_of(settings: WalduckSettings) -> list[Delta]:
    """Every delta of the deltas topic, each checked to sit in its source partition under its key."""
    msgs = await read_topic(settings, settings.deltas_topic)
    out = []
    for m in msgs:
        d = Delta.from_bytes(m.value)
        assert m.partition == d.src_partition, "delta not co-partitioned"
        assert m.key == d.kafka_key()
        out.append(d)
    return out


async def compact_to_end(
    settings: WalduckSettings, log: Path, extra_env: dict[str, str] | None = None, limit_s: float = 90.0
) -> list[Delta]:
    """One runner of a new group over everything produced so far, stopped once it committed it all: the
    deltas topic then."""
    group = new_group()
    proc = start_runner(settings, group, log, extra_env)
    try:
        await wait_committed(settings, group, limit_s=limit_s)
    finally:
        stop(proc)
    return await deltas_of(settings)
