"""Bulk workload throughput: the connector catches up on a backlog of bulk-loaded catalog rows.

The backlog is written while the connector is stopped, so the measured time is the connector's own
(decode, publish, Kafka acks, confirm), not PostgreSQL's insert time. Prints records/s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    current_lsn,
    read_changes,
    running_connector,
    wait_confirmed,
    wait_snapshot_done,
)

from connectors.settings import ConnectorSettings
from stack.workload.bulk import bulk_load
from walduck.records import Kind, Source

pytestmark = pytest.mark.integration


async def _catch_up(dsn: str, settings, tmp_path: Path, partitions: int) -> float:
    cs = ConnectorSettings(status_interval=0.2, heartbeat_interval=0)
    async with running_connector(settings, cs):
        await wait_snapshot_done(dsn, settings.slot_name)
    await asyncio.to_thread(
        bulk_load, dsn, "timestore", tmp_path / "storage", datasets=8, partitions=partitions, days=10, seed=5
    )
    target = current_lsn(dsn)
    started = time.monotonic()
    async with running_connector(settings, cs):
        await wait_confirmed(dsn, settings.slot_name, target, wait_s=600)
        elapsed = time.monotonic() - started
    by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)
    records = sum(
        1
        for recs in by_partition.values()
        for r in recs
        if r.kind is Kind.CHANGE and r.source is Source.STREAM
    )
    assert records >= partitions
    rate = records / elapsed
    print(f"\nconnector throughput: {records} records in {elapsed:.2f}s = {rate:,.0f} records/s")
    return rate


async def test_bulk_backlog_throughput(catalog_dsn: str, fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    rate = await _catch_up(catalog_dsn, settings, tmp_path, partitions=20_000)
    assert rate > 1_000


@pytest.mark.long
async def test_bulk_backlog_throughput_100k(catalog_dsn: str, fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    rate = await _catch_up(catalog_dsn, settings, tmp_path, partitions=100_000)
    assert rate > 1_000
