"""(d) On an idle catalog confirmed_flush_lsn keeps advancing (heartbeats; keepalives alone when other,
unpublished tables write). (e) A row the decoder cannot decode goes to the DLQ and the stream continues."""

from __future__ import annotations

import asyncio
import itertools
import time

import psycopg
import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    current_lsn,
    read_changes,
    read_dead_letters,
    running_connector,
    slot_state,
    wait_confirmed,
    wait_snapshot_done,
)

from connectors.settings import ConnectorSettings
from walduck.records import Kind, Op, Source

pytestmark = pytest.mark.integration


async def _idle(dsn: str, settings, window: float, heartbeat: float) -> None:
    cs = ConnectorSettings(status_interval=0.2, heartbeat_interval=heartbeat)
    async with running_connector(settings, cs):
        await wait_snapshot_done(dsn, settings.slot_name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS public.not_published (id serial PRIMARY KEY, at timestamptz)"
            )
        confirmed0, _ = slot_state(dsn, settings.slot_name)
        assert confirmed0 is not None
        deadline = time.monotonic() + window
        samples: list[tuple[int, int]] = []
        while time.monotonic() < deadline:
            if heartbeat == 0:  # WAL moves only through a table outside the publication
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("INSERT INTO public.not_published (at) VALUES (now())")
            await asyncio.sleep(1.0)
            confirmed, wal = slot_state(dsn, settings.slot_name)
            assert confirmed is not None
            samples.append((confirmed, wal))
        mark = current_lsn(dsn)
        # everything written before `mark` becomes confirmed without any catalog change
        await wait_confirmed(dsn, settings.slot_name, mark, wait_s=15)
    confirmed_values = [c for c, _ in samples]
    assert confirmed_values == sorted(confirmed_values)
    assert confirmed_values[-1] > confirmed0
    advancing = sum(1 for a, b in itertools.pairwise(confirmed_values) if b > a)
    assert advancing >= len(samples) // 2, f"confirmed_flush_lsn advanced only {advancing} times: {samples}"
    if heartbeat:
        by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)
        for records in by_partition.values():
            beats = [r for r in records if r.kind is Kind.HEARTBEAT]
            assert len(beats) >= window / heartbeat / 2
            assert [b.lsn for b in beats] == sorted(b.lsn for b in beats)


@pytest.mark.parametrize("heartbeat", [1.0, 0.0], ids=["heartbeats", "keepalives-only"])
async def test_idle_catalog_confirmed_flush_advances(
    catalog_dsn: str, fresh_topics, heartbeat: float
) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    await _idle(catalog_dsn, settings, window=8.0, heartbeat=heartbeat)


@pytest.mark.long
async def test_idle_catalog_confirmed_flush_advances_60s(catalog_dsn: str, fresh_topics) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    await _idle(catalog_dsn, settings, window=60.0, heartbeat=1.0)


PARTITION_SQL = (
    "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, partition_key, storage_target_id,"
    " file_format, file_path, start_time, end_time) VALUES (%s, 'ds-1', 'man-1', '{}', 'st-1', 'parquet', %s,"
    " '2024-01-01T00:00:00Z', %s)"
)


async def test_infinite_timestamp_arrives_encoded_not_dead_lettered(catalog_dsn: str, fresh_topics) -> None:
    """Issue 16, finding 3: 'infinity' is a valid catalog value; it once went to the DLQ ("timestamp out of
    range"). Now it arrives as walduck's encoding and its transaction share stays whole. (Rows the decoder
    cannot decode still go to the DLQ: tests/unit/connectors/test_transactions.py.)"""
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    async with running_connector(settings, ConnectorSettings(status_interval=0.2, heartbeat_interval=0.5)):
        await wait_snapshot_done(catalog_dsn, settings.slot_name)
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO timestore.storage_targets (id, name, kind) VALUES ('st-1', 'local', 'local')"
            )
            conn.execute("INSERT INTO timestore.datasets (id, slug, name) VALUES ('ds-1', 'ds-1', 'ds-1')")
            conn.execute(
                "INSERT INTO timestore.dataset_manifests (id, dataset_id, version) VALUES ('man-1', 'ds-1', 1)"
            )
            with conn.transaction():
                conn.execute(PARTITION_SQL, ["part-good-1", "a.parquet", "2024-01-01T01:00:00Z"])
                # valid in PostgreSQL, no ISO 8601 basic form
                conn.execute(PARTITION_SQL, ["part-bad", "b.parquet", "infinity"])
                conn.execute(PARTITION_SQL, ["part-good-2", "c.parquet", "2024-01-01T02:00:00Z"])
            conn.execute(PARTITION_SQL, ["part-after", "d.parquet", "2024-01-01T03:00:00Z"])
        await wait_confirmed(catalog_dsn, settings.slot_name, current_lsn(catalog_dsn))
    # the row the decoder used to refuse ('infinity' has no plain ISO 8601 form) is now carried (issue 16)
    assert await read_dead_letters(settings.kafka_bootstrap, settings.dlq_topic) == []
    by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)
    parts = [
        r
        for recs in by_partition.values()
        for r in recs
        if r.source is Source.STREAM and r.table == "dataset_partitions" and r.op is Op.INSERT
    ]
    assert [r.key["id"] for r in parts] == ["part-good-1", "part-bad", "part-good-2", "part-after"]
    assert parts[1].new["end_time"] == "infinity"
    assert [(r.tx_index, r.tx_size, r.tx_total) for r in parts[:3]] == [(0, 3, 3), (1, 3, 3), (2, 3, 3)]
