"""(b) kill -9 the connector (a subprocess) at random points 10 times during a workload, restart it each
time: no committed change is missing, every duplicate repeats a position already delivered."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path

import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    create_truth_slot,
    current_lsn,
    kill9,
    read_changes,
    record_identity,
    start_subprocess,
    truth_changes,
    wait_confirmed,
    wait_snapshot_done,
)
from workloads import random_mix  # type: ignore[import-not-found]

from walduck.records import Kind, Source

pytestmark = pytest.mark.integration


async def test_kill9_ten_times_loses_nothing(catalog_dsn: str, fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    log = tmp_path / "connector.log"
    rng = random.Random(20240101)
    env = {"WALDUCK_HEARTBEAT_INTERVAL": "0.3"}
    proc = start_subprocess(settings, log, **env)
    kills = 0
    try:
        await wait_snapshot_done(catalog_dsn, settings.slot_name)
        truth_slot = f"{settings.slot_name}_truth"
        truth_cp = create_truth_slot(catalog_dsn, truth_slot)
        workload = asyncio.ensure_future(
            asyncio.to_thread(random_mix, catalog_dsn, tmp_path / "storage", seed=3, duration=20.0, rate=25.0)
        )
        for _ in range(10):
            await asyncio.sleep(rng.uniform(0.3, 2.5))
            kill9(proc)
            kills += 1
            proc = start_subprocess(settings, log, **env)
        commits = await workload
        end = current_lsn(catalog_dsn)
        await wait_confirmed(catalog_dsn, settings.slot_name, end, wait_s=120)
    finally:
        proc.terminate()
        proc.wait(30)
    assert kills == 10 and commits > 100
    truth = truth_changes(catalog_dsn, truth_slot)
    by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)

    expected: dict[str | None, list[tuple[int, str, str, str | None]]] = defaultdict(list)
    for c in truth:
        expected[c.dataset_id].append((c.xid, c.table, c.op, c.id))
    duplicates = 0
    for partition, records in by_partition.items():
        seen: set[tuple[object, ...]] = set()
        delivered_max = 0
        first: dict[str | None, list[tuple[int, str, str, str | None]]] = defaultdict(list)
        for r in records:
            if r.kind is not Kind.CHANGE or r.source is not Source.STREAM:
                continue
            ident = record_identity(r)
            if ident in seen:
                duplicates += 1
                assert r.commit_lsn <= delivered_max, f"duplicate {ident} beyond delivered {delivered_max}"
                continue
            seen.add(ident)
            assert r.commit_lsn >= delivered_max, f"new record {ident} behind delivered {delivered_max}"
            delivered_max = r.commit_lsn
            if r.commit_lsn >= truth_cp:
                first[r.dataset_id].append((r.xid, r.table, str(r.op), (r.key or {}).get("id")))
        assert first[None] == expected[None], f"global rows on partition {partition}"
        for dataset, seq in first.items():
            if dataset is not None:
                assert seq == expected[dataset], f"dataset {dataset} on partition {partition}"
    delivered = {
        d
        for recs in by_partition.values()
        for r in recs
        if r.source is Source.STREAM
        for d in [r.dataset_id]
        if d
    }
    assert {d for d in expected if d is not None} <= delivered
    print(f"kill -9 x{kills}: {commits} commits, {len(truth)} changes, {duplicates} duplicate records")
