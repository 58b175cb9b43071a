"""Can faust-streaming run the compactor with its guarantees? Measured against the real Kafka 4.1 broker.

The experimental faust worker is ``tests/support/faust_app.py`` (agent + ``stream.noack()`` + manual acks after
the deltas are acknowledged, state in a changelog-backed Table). Each test is one guarantee of issue 4.
A test that fails for a real faust reason is ``xfail(strict=True)`` with the failure observed, so a
faust fix shows up as XPASS. The conclusion is in ``docs/compactor.md`` ("faust-streaming decision").
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

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.compaction import Compactor
from support.compactor_kafka import (
    PARTITIONS,
    build_model,
    deltas_of,
    produce,
    read_topic,
    stop,
    wait_committed,
)
from support.faust_app import STATE_TABLE, process
from support.reference_consumer import replay
from walduck.config import WalduckSettings
from walduck.deltas import Delta

pytestmark = pytest.mark.integration
LOADED = "state loaded"
TESTS_DIR = Path(__file__).resolve().parents[2]


def start_worker(
    settings: WalduckSettings, app_id: str, log: Path, datadir: Path, wait_empty: bool = False
) -> subprocess.Popen:
    env = {
        "WALDUCK_FAUST_STREAM_WAIT_EMPTY": "true" if wait_empty else "false",
        **os.environ,
        "WALDUCK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "WALDUCK_CHANGES_TOPIC": settings.changes_topic,
        "WALDUCK_DELTAS_TOPIC": settings.deltas_topic,
        "WALDUCK_DLQ_TOPIC": settings.dlq_topic,
        "WALDUCK_TOPIC_PARTITIONS": str(PARTITIONS),
        "WALDUCK_FAUST_APP_ID": app_id,
        "WALDUCK_FAUST_DATADIR": str(datadir),
        # the worker is a test module (tests/support/), not product code
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "support.faust_app", "worker", "-l", "info", "--without-web"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def read_log(log: Path) -> str:
    return log.read_text() if log.exists() else ""


async def wait_started(log: Path, proc: subprocess.Popen, limit_s: float = 60.0) -> None:
    """Until the worker's consumer has an assignment and its table recovery is done."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        text = read_log(log)
        if "Worker ready" in text:
            return
        assert proc.poll() is None, f"faust worker exited {proc.returncode}:\n{text[-3000:]}"
        await asyncio.sleep(0.2)
    raise AssertionError(f"faust worker not ready after {limit_s}s:\n{read_log(log)[-3000:]}")


async def committed_offsets(settings: WalduckSettings, group: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in range(PARTITIONS):
            c = await consumer.committed(TopicPartition(settings.changes_topic, p))
            out[p] = c if c is not None else 0
        return out
    finally:
        await consumer.stop()


async def reference_deltas(settings: WalduckSettings) -> dict[int, list[Delta]]:
    """The deltas the faust app must produce, computed from the changes topic as it is in Kafka."""
    out: dict[int, list[Delta]] = {p: [] for p in range(PARTITIONS)}
    compactors = {p: Compactor(p) for p in range(PARTITIONS)}
    for msg in await read_topic(settings, settings.changes_topic):
        out[msg.partition].extend(process(compactors[msg.partition], msg.value, msg.offset))
    return out


def app_ids() -> str:
    return f"wdf-{uuid.uuid4().hex[:6]}"


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        stop(p)


# (1) ---------------------------------------------------------------------------------------------------------
async def test_faust_starts_consumes_and_produces_on_kafka_4_1(fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=PARTITIONS)
    model = build_model(21, ops=200)
    await produce(settings, model.records)
    app_id = app_ids()
    log = tmp_path / "worker.log"
    proc = start_worker(settings, app_id, log, tmp_path / "data")
    try:
        await wait_started(log, proc)
        await wait_committed(settings, app_id, limit_s=60)
    finally:
        stop(proc)
    deltas = await deltas_of(settings)
    assert replay(deltas) == model.visible()
    expected = await reference_deltas(settings)
    assert sum(len(v) for v in expected.values()) == len(deltas), "deltas differ from the reference"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    assert f"{app_id}-{STATE_TABLE}-changelog" in topics, "faust did not create the table changelog"


def delta_id(d: Delta) -> tuple:
    return (d.src_partition, d.src_offset_from, d.src_offset_to, d.kind.value, d.dataset_id)


async def assert_exact(settings: WalduckSettings, model) -> list[Delta]:
    """No gap: every reference delta is in the deltas topic, nothing else is; the replay is the model's."""
    deltas = await deltas_of(settings)
    expected = await reference_deltas(settings)
    want = {delta_id(d) for v in expected.values() for d in v}
    have = {delta_id(d) for d in deltas}
    missing = sorted(want - have)
    assert not missing, f"gap: {len(missing)} reference deltas missing, e.g. {missing[:12]}"
    assert have - want == set(), f"{len(have - want)} deltas that the reference does not produce"
    assert replay(deltas) == model.visible()
    return deltas


async def wait_log_count(
    log: Path, text: str, count: int, proc: subprocess.Popen, limit_s: float = 60.0
) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if read_log(log).count(text) >= count:
            return
        assert proc.poll() is None, f"faust worker exited {proc.returncode}:\n{read_log(log)[-3000:]}"
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not seen {count} times after {limit_s}s:\n{read_log(log)[-3000:]}")


# (2) ---------------------------------------------------------------------------------------------------------
@pytest.mark.xfail(
    strict=False,  # intermittent (a race): strict would make the suite flaky, see docs/compactor.md
    reason=(
        "faust-streaming 0.15.3 (default stream_wait_empty=True), intermittent: gaps in 4 of 5 runs. "
        "After kill -9 + restart the agent is not given some events (logged 'delivery gap: expected "
        "offset 2, got 3', '... 62, got 88'), yet their offsets are committed, so they are never "
        "re-processed and reference deltas are missing (likely cause, from the source: Stream._py_aiter "
        "skips events of a stale generation or paused flow and acks them, even on a noack() stream)"
    ),
)
async def test_faust_kill_9_and_restart_has_no_gap(fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=PARTITIONS)
    kills = 5
    model = build_model(22, ops=150 * kills)
    app_id = app_ids()
    log = tmp_path / "worker.log"
    chunk = len(model.records) // (kills + 1) + 1
    rng = random.Random(7)
    for i in range(kills):
        proc = start_worker(settings, app_id, log, tmp_path / "data", wait_empty=True)
        await wait_log_count(log, "Worker ready", i + 1, proc)
        producing = asyncio.ensure_future(produce(settings, model.records[i * chunk : (i + 1) * chunk]))
        await wait_log_count(log, "sealed", 1, proc)
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await producing
    await produce(settings, model.records[kills * chunk :])
    proc = start_worker(settings, app_id, log, tmp_path / "data", wait_empty=True)
    try:
        await wait_committed(settings, app_id, limit_s=60)
    finally:
        stop(proc)
    gaps = [line for line in read_log(log).splitlines() if "delivery gap" in line]
    assert not gaps, f"faust did not deliver {len(gaps)} events to the agent: {gaps[:4]}"
    deltas = await assert_exact(settings, model)
    restored = [line for line in read_log(log).splitlines() if LOADED in line and "covered_to=-1" not in line]
    assert restored, "no worker ever restored a non-empty state from the table changelog"
    duplicates = len(deltas) - len({delta_id(d) for d in deltas})
    print(f"faust kill -9 x{kills}: {len(deltas)} deltas, {duplicates} re-produced duplicates")


# (3) ---------------------------------------------------------------------------------------------------------
@pytest.mark.xfail(
    strict=False,
    reason="faust-streaming 0.15.3: intermittent. Passed in the evaluation runs, but in a later full-suite run "
    "one of two workers stopped committing after the rebalance (committed offsets stuck below the partition "
    "ends: partition 3 at 257 of 478) while the other stayed idle; the same rebalance fragility as the strict "
    "xfail below. Non-strict because it is a race, not a deterministic failure.",
)
async def test_faust_two_workers_share_partitions_and_agree(fresh_topics, tmp_path: Path) -> None:
    """Worker A runs, B joins the group, the rest of the records are shared by both: the same result."""
    settings = await fresh_topics(partitions=PARTITIONS)
    model = build_model(23, ops=300)
    half = len(model.records) // 2
    await produce(settings, model.records[:half])
    app_id = app_ids()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_worker(settings, app_id, logs[0], tmp_path / "a")]
    try:
        await wait_started(logs[0], procs[0])
        procs.append(start_worker(settings, app_id, logs[1], tmp_path / "b"))
        await wait_started(logs[1], procs[1], limit_s=30)  # the group has rebalanced over both workers
        await produce(settings, model.records[half:])
        await wait_committed(settings, app_id, limit_s=60)
    finally:
        stop_all(procs)
    assert LOADED in read_log(logs[0]) and LOADED in read_log(logs[1]), "a worker never got a partition"
    await assert_exact(settings, model)


def first_open_share_cut(model) -> int:
    """Index of the last record of a multi-record transaction share in the second half of the stream."""
    return next(
        i
        for i, r in enumerate(model.records)
        if i > len(model.records) // 2
        and r.dataset_id is not None
        and r.tx_size > 1
        and r.tx_index == r.tx_size - 1
    )


@pytest.mark.xfail(
    strict=True,
    reason=(
        "faust-streaming 0.15.3 with its default stream_wait_empty=True: a rebalance waits in "
        "Consumer.wait_empty() until every started event is acked ('wait_empty: Waiting for tasks'), but an "
        "event of an open window is deliberately unacked, so the member cannot rejoin: the second worker "
        "is not ready after 20 s (the first is evicted after the 60 s rebalance timeout)"
    ),
)
async def test_faust_rebalance_with_an_open_window_does_not_stall(fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=PARTITIONS)
    model = build_model(25, ops=200)
    cut = first_open_share_cut(model)
    await produce(settings, model.records[:cut])  # leaves a half-received share: an unacked event
    app_id = app_ids()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_worker(settings, app_id, logs[0], tmp_path / "a", wait_empty=True)]
    try:
        await wait_started(logs[0], procs[0])
        await wait_log_count(logs[0], LOADED, PARTITIONS, procs[0])
        await asyncio.sleep(1.0)
        procs.append(start_worker(settings, app_id, logs[1], tmp_path / "b", wait_empty=True))
        await wait_started(logs[1], procs[1], limit_s=20)
    finally:
        stop_all(procs)


# (4) ---------------------------------------------------------------------------------------------------------
async def test_faust_commits_never_pass_unacked_deltas_or_open_windows(fresh_topics, tmp_path: Path) -> None:
    """Stop the input in the middle of a multi-record transaction share: the group's committed offset must
    stay at the open window's first offset (manual acks), and equal the end of the last sealed window
    everywhere else. Then kill -9 right after output was produced: committed offsets never exceed the
    first window whose deltas are missing."""
    settings = await fresh_topics(partitions=PARTITIONS)
    model = build_model(24, ops=300)
    cut = first_open_share_cut(model)
    await produce(settings, model.records[:cut])  # the share of records[cut] is now half-received
    app_id = app_ids()
    log = tmp_path / "worker.log"
    proc = start_worker(settings, app_id, log, tmp_path / "data")
    try:
        await wait_started(log, proc)
        compactors = {p: Compactor(p) for p in range(PARTITIONS)}
        for msg in await read_topic(settings, settings.changes_topic):
            process(compactors[msg.partition], msg.value, msg.offset)
        sealed_end = {p: c.covered_to + 1 for p, c in compactors.items()}
        assert any(not c.clean for c in compactors.values()), "the cut did not leave an open window"
        deadline = time.monotonic() + 45
        committed = await committed_offsets(settings, app_id)
        while committed != sealed_end and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            committed = await committed_offsets(settings, app_id)
        assert committed == sealed_end, f"committed {committed}, sealed windows end at {sealed_end}"
        await asyncio.sleep(2.0)  # several commit intervals: still nothing of the open window
        assert await committed_offsets(settings, app_id) == sealed_end
        # kill -9 right after output is produced, while the rest streams in
        before = read_log(log).count("sealed")
        producing = asyncio.ensure_future(produce(settings, model.records[cut:]))
        await wait_log_count(log, "sealed", before + 5, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await producing
    finally:
        stop(proc)
    committed = await committed_offsets(settings, app_id)
    present = {delta_id(d) for d in await deltas_of(settings)}
    for p, ref in (await reference_deltas(settings)).items():
        missing = [d for d in ref if delta_id(d) not in present]
        allowed = missing[0].src_offset_from if missing else None
        assert allowed is None or committed[p] <= allowed, (
            f"partition {p}: committed {committed[p]} but the deltas from offset {allowed} are not in Kafka"
        )
