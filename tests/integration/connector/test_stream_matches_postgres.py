"""(a) For a deterministic workload of every shape, the records in Kafka equal, in order per dataset, the
changes PostgreSQL committed (PostgreSQL's account: a second, test_decoding slot)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    create_truth_slot,
    current_lsn,
    read_changes,
    running_connector,
    truth_changes,
    wait_confirmed,
    wait_slot,
)
from workloads import every_shape  # type: ignore[import-not-found]

from connectors.settings import ConnectorSettings
from walduck.records import Kind, Source

pytestmark = pytest.mark.integration


async def test_every_shape_in_order_per_dataset(catalog_dsn: str, fresh_topics, tmp_path: Path) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    truth_slot = f"{settings.slot_name}_truth"
    async with running_connector(settings, ConnectorSettings(status_interval=0.2, heartbeat_interval=0.5)):
        await wait_slot(catalog_dsn, settings.slot_name)
        truth_cp = create_truth_slot(catalog_dsn, truth_slot)
        commits = await asyncio.to_thread(every_shape, catalog_dsn, tmp_path / "storage")
        await wait_confirmed(catalog_dsn, settings.slot_name, current_lsn(catalog_dsn))
    truth = truth_changes(catalog_dsn, truth_slot)
    by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)

    assert commits > 40 and len(truth) > 100
    assert {c.table for c in truth} == {
        "storage_targets", "datasets", "dataset_schema_versions", "dataset_manifests", "dataset_partitions",
    }  # fmt: skip
    assert {c.op for c in truth} >= {"insert", "update", "delete"}

    # per dataset (and the global rows, on every partition): Kafka's sequence == PostgreSQL's
    expected: dict[str | None, list[tuple[int, str, str, str | None]]] = defaultdict(list)
    for c in truth:
        expected[c.dataset_id].append((c.xid, c.table, c.op, c.id))
    tx_sizes: dict[int, int] = defaultdict(int)
    for c in truth:
        tx_sizes[c.xid] += 1
    globals_seen = 0
    for partition, records in by_partition.items():
        got: dict[str | None, list[tuple[int, str, str, str | None]]] = defaultdict(list)
        stream = [
            r
            for r in records
            if r.kind is Kind.CHANGE and r.source is Source.STREAM and r.commit_lsn >= truth_cp
        ]
        for r in stream:
            got[r.dataset_id].append((r.xid, r.table, str(r.op), (r.key or {}).get("id")))
            assert r.tx_total == tx_sizes[r.xid], f"tx_total of xid {r.xid}"
        assert got[None] == expected[None], f"global rows on partition {partition}"
        globals_seen += len(got[None])
        for dataset, seq in got.items():
            if dataset is not None:
                assert seq == expected[dataset], f"dataset {dataset} on partition {partition}"
        # tx_index/tx_size: each transaction's share per key is complete and numbered 0..n-1
        shares: dict[tuple[int, str | None], list[int]] = defaultdict(list)
        for r in stream:
            shares[(r.commit_lsn, r.dataset_id)].append(r.tx_index)
        assert all(v == list(range(len(v))) for v in shares.values())
        assert all(r.tx_size == len(shares[(r.commit_lsn, r.dataset_id)]) for r in stream)
        # commit order: stream commit LSNs never go backwards on a partition
        stream_all = [r for r in records if r.source is Source.STREAM]
        back = [
            i for i in range(1, len(stream_all)) if stream_all[i].commit_lsn < stream_all[i - 1].commit_lsn
        ]
        assert not back, [
            (r.kind.value, r.commit_lsn, r.lsn, r.table, r.tx_index, r.commit_ts)
            for r in stream_all[max(0, back[0] - 3) : back[0] + 2]
        ]
        # heartbeats reached every partition
        assert any(r.kind is Kind.HEARTBEAT for r in records)
    datasets_in_kafka = {
        d
        for recs in by_partition.values()
        for r in recs
        if r.source is Source.STREAM and r.commit_lsn >= truth_cp
        for d in [r.dataset_id]
        if d
    }
    assert datasets_in_kafka == {d for d in expected if d is not None}
    assert globals_seen == 4 * len(expected[None])
