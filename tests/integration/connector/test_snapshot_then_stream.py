"""(c) A catalog with existing data is snapshotted, then streamed, while a workload keeps writing:
snapshot reads + streamed changes fold into exactly PostgreSQL's final catalog (no gap, no overlap)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    assert_same_catalog,
    catalog_rows,
    current_lsn,
    fold,
    kill9,
    read_changes,
    running_connector,
    start_subprocess,
    wait_confirmed,
    wait_slot,
    wait_snapshot_done,
)
from workloads import random_mix  # type: ignore[import-not-found]

from connectors.settings import ConnectorSettings
from stack.workload.bulk import bulk_load
from walduck.records import Kind, Source

pytestmark = pytest.mark.integration


async def _snapshot_then_stream(dsn: str, settings, tmp_path: Path, partitions: int) -> None:
    summary = await asyncio.to_thread(
        bulk_load, dsn, "timestore", tmp_path / "storage", datasets=5, partitions=partitions, days=10, seed=1
    )
    assert summary.partitions == partitions
    started = time.monotonic()
    async with running_connector(settings, ConnectorSettings(status_interval=0.2, heartbeat_interval=0.5)):
        await wait_slot(dsn, settings.slot_name)
        # writes while the snapshot is being read: they must arrive streamed, exactly once
        commits = await asyncio.to_thread(random_mix, dsn, tmp_path / "storage", seed=9, duration=4.0, rate=0)
        await wait_snapshot_done(dsn, settings.slot_name, wait_s=600)
        snapshot_s = time.monotonic() - started
        await wait_confirmed(dsn, settings.slot_name, current_lsn(dsn), wait_s=600)
    by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)
    snap = [
        r
        for recs in by_partition.values()
        for r in recs
        if r.source is Source.SNAPSHOT and r.kind is Kind.CHANGE
    ]
    stream = [
        r
        for recs in by_partition.values()
        for r in recs
        if r.source is Source.STREAM and r.kind is Kind.CHANGE
    ]
    assert sum(1 for r in snap if r.table == "dataset_partitions") >= partitions
    assert stream, "the concurrent workload produced no streamed changes"
    assert commits > 0
    # SNAPSHOT_DONE once on every partition, after all of that partition's snapshot records
    for records in by_partition.values():
        kinds = [r.kind for r in records if r.source is Source.SNAPSHOT]
        assert kinds.count(Kind.SNAPSHOT_DONE) == 1 and kinds[-1] is Kind.SNAPSHOT_DONE
    # per dataset: tx_size is that dataset's snapshot share, indices 0..n-1
    shares: dict[str | None, list[int]] = {}
    for r in snap:
        if r.dataset_id is not None:
            shares.setdefault(r.dataset_id, []).append(r.tx_index)
    for ds, idx in shares.items():
        assert sorted(idx) == list(range(len(idx))), ds
    unique_rows = len({(r.table, (r.key or {}).get("id")) for r in snap})
    assert {r.tx_total for r in snap} == {unique_rows}
    assert all(r.tx_size == len(shares[r.dataset_id]) for r in snap if r.dataset_id is not None)
    assert_same_catalog(fold(by_partition), catalog_rows(dsn))
    print(f"snapshot of {len(snap)} rows + {len(stream)} streamed changes; snapshot took {snapshot_s:.1f}s")


async def test_snapshot_then_stream_5k(catalog_dsn: str, fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    await _snapshot_then_stream(catalog_dsn, settings, tmp_path, partitions=5_000)


@pytest.mark.long
async def test_snapshot_then_stream_100k(catalog_dsn: str, fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    await _snapshot_then_stream(catalog_dsn, settings, tmp_path, partitions=100_000)


async def test_killed_mid_snapshot_redoes_it(catalog_dsn: str, fresh_topics, tmp_path: Path) -> None:
    """kill -9 during the snapshot: no marker, so the next start drops the slot and snapshots again."""
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    await asyncio.to_thread(
        bulk_load,
        catalog_dsn,
        "timestore",
        tmp_path / "storage",
        datasets=4,
        partitions=20_000,
        days=5,
        seed=2,
    )
    log = tmp_path / "connector.log"
    proc = start_subprocess(settings, log, WALDUCK_SNAPSHOT_FETCH_ROWS="500")
    try:
        await wait_slot(catalog_dsn, settings.slot_name, wait_s=60)
        kill9(proc)  # the slot exists, the snapshot is being read and published
        first = await read_changes(settings.kafka_bootstrap, settings.changes_topic)
        assert not any(r.kind is Kind.SNAPSHOT_DONE for recs in first.values() for r in recs), (
            "killed too late"
        )
        proc = start_subprocess(settings, log)
        await wait_snapshot_done(catalog_dsn, settings.slot_name, wait_s=300)
        await asyncio.to_thread(random_mix, catalog_dsn, tmp_path / "storage", seed=4, duration=2.0, rate=0)
        await wait_confirmed(catalog_dsn, settings.slot_name, current_lsn(catalog_dsn), wait_s=300)
    finally:
        proc.terminate()
        proc.wait(30)
    by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)
    done = [r for recs in by_partition.values() for r in recs if r.kind is Kind.SNAPSHOT_DONE]
    assert len(done) == len(by_partition) and len({r.commit_lsn for r in done}) == 1
    assert_same_catalog(fold(by_partition, snapshot_lsn=done[0].commit_lsn), catalog_rows(catalog_dsn))
