"""Compactor state snapshots against the real Kafka (issue 15): a restart after a long history restores from
the newest snapshot + the deltas after it, reads far fewer records than the history, and ends in exactly the
state a full replay gives; the deltas it produces afterwards are the catalog's truth with no duplicate."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest

from pipeline.compaction import Compactor
from pipeline.runner import CompactorRunner
from pipeline.settings import CompactorSettings
from support.catalog_model import CatalogModel
from support.compaction_runs import assert_no_duplicates
from support.compactor_kafka import (
    PARTITIONS,
    caught_up,
    deltas_of,
    produce,
    wait_committed,
)
from support.reference_consumer import replay
from walduck.config import WalduckSettings

pytestmark = pytest.mark.integration

# churn over a small catalog: the history grows, the visible set does not
CHURN = [
    "append",
    "append",
    "retention",
    "compaction",
    "append_then_delete",
    "touch",
    "heartbeat",
    "metadata",
]


def churn(model: CatalogModel, rng: random.Random, ops: int) -> None:
    model.run([rng.choice(CHURN) for _ in range(ops)])


async def run_until(runner: CompactorRunner, done, limit_s: float = 90.0) -> asyncio.Task:
    task = asyncio.create_task(runner.run())
    deadline = time.monotonic() + limit_s
    while not await done():
        if task.done():
            task.result()
        assert time.monotonic() < deadline, "runner did not get there in time"
        await asyncio.sleep(0.2)
    return task


async def stop(runner: CompactorRunner, task: asyncio.Task) -> None:
    runner.stopping.set()
    await asyncio.wait_for(task, 60)


def state_of(runner: CompactorRunner, partition: int) -> dict:
    view = runner.work[partition].compactor.state_view(full=False)
    return {k: view[k] for k in ("shards", "datasets")}


def full_replay(partition: int, deltas) -> dict:
    """The state every delta of the partition describes (a full replay, nothing held back)."""
    compactor = Compactor(partition)
    for d in deltas:
        if d.src_partition == partition:
            compactor.apply_delta(d)
    view = compactor.state_view(full=False)
    return {k: view[k] for k in ("shards", "datasets")}


def settled(runner: CompactorRunner) -> bool:
    """Every partition held, restored and at rest (a held-back window re-processed)."""
    return set(runner.work) == set(range(PARTITIONS)) and all(
        w.compactor.at_rest for w in runner.work.values()
    )


def restored_and_settled(runner: CompactorRunner):
    """For :func:`run_until`: every partition restored, held and at rest."""

    async def check() -> bool:
        return len(runner.restore_stats) == PARTITIONS and settled(runner)

    return check


async def test_restart_restores_from_snapshot_and_tail_like_a_full_replay(
    pipeline_topics: WalduckSettings,
) -> None:
    settings = pipeline_topics
    group = f"g-{uuid.uuid4().hex[:8]}"
    # a snapshot once the tail reaches max(100, 1 x state entries): many snapshots over this history
    # and small windows (a poll of 10 records each): a long history of deltas from one burst of input
    knobs = CompactorSettings(
        group_id=group,
        metrics_port=0,
        snapshot_min_records=100,
        snapshot_ratio=1.0,
        max_poll_records=10,
        flush_max_changes=10,
    )
    rng = random.Random(15)
    model = CatalogModel(seed=15)
    for _ in range(16):
        model.create_dataset()
    churn(model, rng, 5000)
    await produce(settings, model.records)
    sent = len(model.records)

    # the first one stops without a final snapshot (as after a kill -9): its successor has a tail to replay
    first = CompactorRunner(settings, knobs.model_copy(update={"snapshot_on_stop": False}))

    task = await run_until(first, lambda: caught_up(settings, group), limit_s=180)
    assert first.snapshots_on, "the state topic was created with the others"
    await stop(first, task)
    history = await deltas_of(settings)
    assert len(history) > 800, len(history)

    # restart: restore from the newest snapshot of each partition + the deltas after it
    second = CompactorRunner(settings, knobs)

    task = await run_until(second, restored_and_settled(second))
    try:
        read = sum(s["snapshot_records"] + s["deltas"] for s in second.restore_stats.values())
        busy = 0
        for p, stats in second.restore_stats.items():
            in_partition = [d for d in history if d.src_partition == p]
            if len(in_partition) > 300:  # more than a snapshot interval: restored from a snapshot
                busy += 1
                assert stats["snapshot_records"] > 0, (p, stats, len(in_partition))
                assert stats["deltas_from"] > 0, (p, stats)
            # the tail is bounded by the snapshot interval, not by the history
            assert stats["deltas"] <= max(100, stats["snapshot_entries"]) + 50, (p, stats, len(in_partition))
            assert state_of(second, p) == full_replay(p, in_partition), (
                f"partition {p}: snapshot + tail differs from a full replay"
            )
        assert busy >= 2, "the history did not spread over the partitions"
        assert read * 5 < len(history), f"restore read {read} records for a history of {len(history)} deltas"

        # it goes on exactly: more history after the restart, then the deltas topic is the catalog's truth
        churn(model, rng, 400)
        await produce(settings, model.records[sent:])
        await wait_committed(settings, group, limit_s=120)
        assert settled(second)
        after = await deltas_of(settings)
        assert_no_duplicates(after)
        assert replay(after) == model.visible()
        for p in range(PARTITIONS):
            assert state_of(second, p) == full_replay(p, after)
    finally:
        await stop(second, task)
    # a clean stop snapshots every partition: the next restore replays no delta at all
    third = CompactorRunner(settings, knobs)

    task = await run_until(third, restored_and_settled(third))
    try:
        assert all(s["deltas"] == 0 for s in third.restore_stats.values()), third.restore_stats
        for p in range(PARTITIONS):
            assert state_of(third, p) == full_replay(p, after)
    finally:
        await stop(third, task)


async def test_first_upgrade_replays_then_snapshots(pipeline_topics: WalduckSettings) -> None:
    """A compactor that never wrote a snapshot (snapshots off, or before the upgrade): the next one replays the
    whole deltas partition once, writes a snapshot with its next windows, and the one after reads that."""
    settings = pipeline_topics
    group = f"g-{uuid.uuid4().hex[:8]}"
    rng = random.Random(16)
    model = CatalogModel(seed=16)
    for _ in range(12):
        model.create_dataset()
    churn(model, rng, 1500)
    await produce(settings, model.records)
    small = {"max_poll_records": 20, "flush_max_changes": 20}
    old = CompactorRunner(
        settings, CompactorSettings(group_id=group, metrics_port=0, snapshots=False, **small)
    )
    await stop(old, await run_until(old, lambda: caught_up(settings, group), limit_s=120))
    knobs = CompactorSettings(group_id=group, metrics_port=0, snapshot_min_records=50, **small)
    upgraded = CompactorRunner(settings, knobs)

    async def assigned() -> bool:
        return len(upgraded.restore_stats) == PARTITIONS

    task = await run_until(upgraded, assigned)
    try:
        replayed = dict(upgraded.restore_stats)
        assert all(s["snapshot_records"] == 0 and s["deltas_from"] == 0 for s in replayed.values())
        sent = len(model.records)
        churn(model, rng, 200)  # windows to carry the first snapshots
        await produce(settings, model.records[sent:])
        await wait_committed(settings, group, limit_s=120)
    finally:
        await stop(upgraded, task)
    third = CompactorRunner(settings, knobs)

    task = await run_until(third, restored_and_settled(third))
    try:
        # every partition whose replay was worth a snapshot (50 records) got one with its next window
        busy = [p for p, s in replayed.items() if s["deltas"] >= 50]
        assert len(busy) >= 2, replayed
        assert all(third.restore_stats[p]["snapshot_records"] > 0 for p in busy), third.restore_stats
        after = await deltas_of(settings)
        assert replay(after) == model.visible()
        assert_no_duplicates(after)
        for p in range(PARTITIONS):
            assert state_of(third, p) == full_replay(p, after)
    finally:
        await stop(third, task)
