"""``walduck bench history``: compactor restore time after 1× and 10× history over the same catalog (issue 15).

One run, one set of topics. A catalog of ``catalog`` partitions over ``datasets`` datasets is published as change
records (straight to the changes topic: the compactor is what is measured, not the connector), then ``history``
partition updates (round-robin over the partitions, so consecutive records touch different datasets and nearly
every record becomes a delta of its own; the catalog never grows). The real compactor (``CompactorRunner``,
in-process) processes it, and three restores of every changes partition are timed (the restore pass,
``CompactorRunner.restore_seconds``) and counted (records read):

* ``after kill``: the processing member stopped without a final snapshot (as after a kill -9): newest snapshot
  + the tail the snapshot interval left;
* ``after stop``: that restore's member stopped cleanly (final snapshots): snapshot only;
* ``full replay``: a member with snapshots off (the old path: every delta from offset 0), the same-run baseline.

Then ``9 × history`` more updates and the same three restores: the ratios 10× / 1× are the result (goal ≤ 1.2
for the snapshot restores; the full replay shows what history used to cost).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline.runner import CompactorRunner
from pipeline.settings import CompactorSettings
from stack.bench.env import BenchServices, scenario_env
from stack.bench.report import Result
from stack.services.kafka import quiet_client_logs
from walduck.catalog_tables import DATASETS, MANIFESTS, PARTITIONS
from walduck.config import WalduckSettings
from walduck.kafka_security import client_kwargs, start_client
from walduck.records import ChangeRecord, Kind, Op, Source, partition_of

TS = "2024-01-01T00:00:00+00:00"
SHARD = "2024-01-01"


class _Source:
    """Change records of a synthetic catalog: one transaction per record, commit LSNs increasing."""

    def __init__(self, datasets: int, catalog: int) -> None:
        self.datasets = [f"ds-{i:05d}" for i in range(datasets)]
        self.catalog = catalog
        self.lsn = 0x1000000
        self.xid = 1000
        self.version: dict[int, int] = {}

    def _rec(
        self, table: str, op: Op, new: dict[str, Any], old: dict[str, Any] | None, ds: str
    ) -> ChangeRecord:
        self.lsn += 0x100
        self.xid += 1
        return ChangeRecord(
            kind=Kind.CHANGE,
            source=Source.STREAM,
            lsn=self.lsn,
            commit_lsn=self.lsn,
            commit_ts=TS,
            table=table,
            op=op,
            new=new,
            old=old,
            dataset_id=ds,
            xid=self.xid,
        )

    def _partition(self, i: int) -> dict[str, Any]:
        ds = self.datasets[i % len(self.datasets)]
        return {
            "id": f"p-{i:08d}",
            "dataset_id": ds,
            "manifest_id": f"dm-{ds}",
            "manifest_shard": SHARD,
            "storage_target_id": "st-bench",
            "file_path": f"{ds}/{SHARD}/p-{i:08d}.parquet",
            "file_format": "parquet",
            "start_time": TS,
            "end_time": TS,
            "row_count": 1000 + self.version.get(i, 0),
            "file_size_bytes": 65536,
            "metadata": {"tableName": "records"},
            "created_at": TS,
        }

    def catalog_records_head(self) -> list[ChangeRecord]:
        """Every dataset and its published manifest (the catalog's records before its partitions)."""
        out = []
        for ds in self.datasets:
            out.append(self._rec(DATASETS, Op.INSERT, {"id": ds, "slug": ds, "status": "active"}, None, ds))
            manifest = {
                "id": f"dm-{ds}",
                "dataset_id": ds,
                "status": "published",
                "manifest_shard": SHARD,
                "schema_version_id": None,
            }
            out.append(self._rec(MANIFESTS, Op.INSERT, manifest, None, ds))
        return out

    def partition_insert(self, i: int) -> ChangeRecord:
        return self._rec(
            PARTITIONS, Op.INSERT, self._partition(i), None, self.datasets[i % len(self.datasets)]
        )

    def catalog_records(self) -> list[ChangeRecord]:
        return self.catalog_records_head() + [self.partition_insert(i) for i in range(self.catalog)]

    def updates(self, start: int, count: int) -> list[ChangeRecord]:
        """``count`` partition updates from history position ``start`` (round-robin over the catalog)."""
        out = []
        for h in range(start, start + count):
            i = h % self.catalog
            old = self._partition(i)
            self.version[i] = self.version.get(i, 0) + 1
            out.append(self._rec(PARTITIONS, Op.UPDATE, self._partition(i), old, old["dataset_id"]))
        return out


async def _produce(settings: WalduckSettings, records: list[ChangeRecord]) -> None:
    producer = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", linger_ms=20, max_batch_size=1 << 20, enable_idempotence=True
    )
    await start_client(producer, settings)
    try:
        parts = settings.topic_partitions
        pending = []
        for rec in records:
            pending.append(
                await producer.send(
                    settings.changes_topic,
                    rec.to_bytes(),
                    key=rec.kafka_key(),
                    partition=partition_of(rec.dataset_id or "", parts),
                )
            )
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _changes_ends(settings: WalduckSettings) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await start_client(consumer, settings)
    try:
        tps = [TopicPartition(settings.changes_topic, p) for p in range(settings.topic_partitions)]
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _member(
    settings: WalduckSettings, knobs: CompactorSettings, until_caught_up: bool, limit_s: float = 3600
) -> CompactorRunner:
    """Run a compactor member until it restored every partition (and, with ``until_caught_up``, processed the
    whole changes topic), then stop it."""
    runner = CompactorRunner(settings, knobs)
    ends = await _changes_ends(settings) if until_caught_up else {}
    task = asyncio.create_task(runner.run())
    deadline = time.monotonic() + limit_s
    try:
        while True:
            if task.done():
                task.result()
                raise RuntimeError("the compactor stopped by itself")
            works = runner.work
            restored = len(runner.restore_stats) == settings.topic_partitions and len(works) == len(
                runner.restore_stats
            )
            if restored and all(w.compactor.at_rest for w in works.values()):
                if not until_caught_up or all(
                    works[p].compactor.covered_to + 1 >= end for p, end in ends.items() if end > 0
                ):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the compactor did not catch up in time")
            await asyncio.sleep(0.2)
    finally:
        runner.stopping.set()
        await asyncio.wait_for(task, 300)
    return runner


def _read(runner: CompactorRunner) -> tuple[int, int]:
    """(snapshot records, deltas) the restore read, over every partition."""
    stats = runner.restore_stats.values()
    return sum(s["snapshot_records"] for s in stats), sum(s["deltas"] for s in stats)


async def _scenario(settings: WalduckSettings, datasets: int, catalog: int, history: int) -> dict[str, Any]:
    group = f"wdbench-history-{uuid.uuid4().hex[:6]}"
    # small windows (polls of 500 records, sealed every 20 ms), so the deltas topic grows with the history
    # (one window per poll and partition made the run transaction-bound: over 20 min for --quick)
    base = CompactorSettings(group_id=group, metrics_port=0, max_poll_records=500, flush_interval_ms=20)
    crashy = base.model_copy(update={"snapshot_on_stop": False})
    no_snapshots = base.model_copy(update={"snapshots": False, "snapshot_on_stop": False})
    source = _Source(datasets, catalog)
    out: dict[str, Any] = {}
    done = 0
    for label, size in (("1x", history), ("10x", 10 * history)):
        started = time.monotonic()
        records = (source.catalog_records() if done == 0 else []) + source.updates(done, size - done)
        await _produce(settings, records)
        done = size
        produced_s = time.monotonic() - started
        started = time.monotonic()
        await _member(settings, crashy, until_caught_up=True)  # processes the new history, no final snapshot
        processed_s = time.monotonic() - started
        after_kill = await _member(settings, base, until_caught_up=False)  # stops cleanly: final snapshots
        after_stop = await _member(settings, crashy, until_caught_up=False)
        replay = await _member(settings, no_snapshots, until_caught_up=False)
        out[label] = {
            "history_updates": size,
            "produce_s": round(produced_s, 2),
            "process_s": round(processed_s, 2),
            "deltas": _read(replay)[1],
            "state_entries": sum(w.compactor.state_partitions for w in after_stop.work.values())
            if after_stop.work
            else None,
            "after_kill": {"s": after_kill.restore_seconds, "read": _read(after_kill)},
            "after_stop": {"s": after_stop.restore_seconds, "read": _read(after_stop)},
            "full_replay": {"s": replay.restore_seconds, "read": _read(replay)},
        }
    return out


def run_history(services: BenchServices, datasets: int, catalog: int, history: int) -> Result:
    result = Result("history", {"datasets": datasets, "catalog_partitions": catalog, "history_1x": history})
    with scenario_env(services, "history", topics=True) as env, quiet_client_logs():
        figures = asyncio.run(_scenario(env.settings, datasets, catalog, history))
    one, ten = figures["1x"], figures["10x"]
    result.series = figures
    result.add("deltas in the topic, 1x / 10x", f"{one['deltas']} / {ten['deltas']}")
    for key, name, goal in (
        ("after_stop", "compactor restore after a clean stop (snapshot)", "≤ 1.2×"),
        ("after_kill", "compactor restore after a kill (snapshot + tail)", "≤ 1.2×"),
        ("full_replay", "compactor restore by full replay (old path)", ""),
    ):
        value, baseline = ten[key]["s"], one[key]["s"]
        ratio = value / baseline if value and baseline else None
        result.add(
            f"{name}, 10x (baseline: 1x)",
            round(value, 3),
            "s",
            baseline=round(baseline, 3),
            goal=goal,
            ok=None if not goal or ratio is None else ratio <= 1.2,
        )
        result.notes.append(
            f"{key}: records read (snapshot chunks+heads, deltas) 1x {one[key]['read']}, 10x {ten[key]['read']}"
        )
    result.notes.append(
        f"history processed: 1x {one['process_s']} s, 10x (the 9x added) {ten['process_s']} s; "
        f"state entries {ten['state_entries']}"
    )
    result.notes.append(
        "a fresh query replica boots from a PostgreSQL snapshot and follows the deltas from their end offsets "
        "(sinks/context/build.py): it reads no history; not measured here (walduck bench bootstrap measures it)"
    )
    return result
