"""The compactor runner against a real Kafka: exact results, kill -9 restarts, two instances, DLQ."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import pytest

from support.catalog_model import CatalogModel
from support.compaction_runs import assert_no_duplicates
from support.compactor_kafka import (
    PARTITIONS,
    build_model,
    compact_to_end,
    deltas_of,
    new_group,
    produce,
    read_topic,
    start_runner,
    stop,
    wait_committed,
    wait_for_log,
)
from support.reference_consumer import replay
from walduck.config import WalduckSettings
from walduck.records import partition_of

pytestmark = pytest.mark.integration


async def test_runner_output_replays_to_the_visible_set(
    pipeline_topics: WalduckSettings, tmp_path: Path
) -> None:
    settings = pipeline_topics
    model = build_model(11)
    await produce(settings, model.records)
    deltas = await compact_to_end(settings, tmp_path / "runner.log")
    assert_no_duplicates(deltas)
    assert replay(deltas) == model.visible()
    entries = sum(d.entry_count for d in deltas)
    print(f"records={len(model.records)} deltas={len(deltas)} entries={entries}")


@pytest.mark.parametrize(
    "kills", [pytest.param(3, id="short"), pytest.param(10, id="long", marks=pytest.mark.long)]
)
async def test_kill_9_mid_stream_and_restart_is_exact(
    pipeline_topics: WalduckSettings, tmp_path: Path, kills: int
) -> None:
    """Each round: start a runner, wait for its partitions, produce a chunk while it runs, kill -9 it."""
    settings = pipeline_topics
    model = build_model(12, ops=150 * kills)
    group = new_group()
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
    group = new_group()
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
    deltas = await compact_to_end(settings, tmp_path / "runner.log")
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

    group = new_group()
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
