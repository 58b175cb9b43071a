"""Issue 16, finding 6: a rejected record inside a multi-record transaction does not orphan its share.

A transaction of three partition inserts for one dataset whose middle record is malformed (an insert without
its row): the runner dead-letters it, the share's other two records still complete, the window seals, the
offsets are committed to the end and the next transaction of that dataset applies too. Before, the malformed
offset took no slot in its share (``Compactor.skip``): the share stayed half-received, blocking sealing for the
partition until the next transaction of that key rejected the whole share as ``incomplete_transaction``.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.compaction import Compactor
from support.compactor_kafka import (
    compact_to_end,
    produce,
    read_topic,
)
from support.reference_consumer import replay
from walduck.config import WalduckSettings
from walduck.records import ChangeRecord, Kind, Op, Source, share_position

pytestmark = pytest.mark.integration

DS = "ds-share"


def _rec(lsn: int, commit: int, table: str, row: dict, index: int = 0, size: int = 1) -> ChangeRecord:
    return ChangeRecord(
        Kind.CHANGE,
        Source.STREAM,
        lsn,
        commit,
        "2024-01-01T00:00:00+00:00",
        table,
        Op.INSERT,
        {"id": row["id"]},
        row,
        None,
        DS,
        commit,
        index,
        size,
        size,
    )


def _part(pid: str) -> dict:
    return {
        "id": pid,
        "dataset_id": DS,
        "manifest_id": "dm-share",
        "manifest_shard": "2024-01-01",
        "storage_target_id": "st-1",
        "file_path": f"{pid}.parquet",
        "file_format": "parquet",
        "start_time": "2024-01-01T00:00:00+00:00",
        "end_time": "2024-01-01T01:00:00+00:00",
        "row_count": 1,
        "file_size_bytes": 1,
        "partition_key": {},
        "metadata": {},
    }


class _Raw:
    """A record whose Kafka value is replaced by ``value`` (same key and partition)."""

    def __init__(self, rec: ChangeRecord, value: bytes) -> None:
        self.dataset_id, self._key, self._value = rec.dataset_id, rec.kafka_key(), value

    def to_bytes(self) -> bytes:
        return self._value

    def kafka_key(self) -> bytes:
        return self._key


def _history() -> tuple[list, bytes]:
    ds = {"id": DS, "slug": DS, "name": DS, "status": "active", "write_format": "parquet", "metadata": {}}
    manifest = {"id": "dm-share", "dataset_id": DS, "status": "published", "manifest_shard": "2024-01-01"}
    tx = [_rec(300 + i, 390, "dataset_partitions", _part(f"p-{i}"), i, 3) for i in range(3)]
    doc = orjson.loads(tx[1].to_bytes())
    doc["new"] = None  # an insert without its row: MalformedRecord, its share position still readable
    bad = orjson.dumps(doc)
    records = [
        _rec(100, 110, "datasets", ds),
        _rec(200, 210, "dataset_manifests", manifest),
        tx[0],
        _Raw(tx[1], bad),
        tx[2],
        _rec(400, 410, "dataset_partitions", _part("p-after")),
    ]
    return records, bad


def test_compactor_accounts_a_skipped_slot() -> None:
    records, _bad = _history()
    comp = Compactor(0)
    for offset, rec in enumerate(records):
        if isinstance(rec, _Raw):
            comp.skip(offset, share_position(rec.to_bytes()))
        else:
            comp.feed(rec, offset)
    deltas = comp.flush()
    assert comp.clean and comp.covered_to == len(records) - 1 and not comp.drain_rejected()
    visible = {p for (d, _), parts in replay(deltas).items() if d == DS for p in parts}
    assert visible == {"p-0", "p-2", "p-after"}


async def test_rejected_record_keeps_its_transaction_share_whole(
    pipeline_topics: WalduckSettings, tmp_path: Path
) -> None:
    settings = pipeline_topics
    records, bad = _history()
    await produce(settings, records)
    deltas = await compact_to_end(settings, tmp_path / "runner.log", limit_s=60)  # every offset sealed
    visible = {p for (d, _), parts in replay(deltas).items() if d == DS for p in parts}
    assert visible == {"p-0", "p-2", "p-after"}
    dlq = await read_topic(settings, settings.dlq_topic)
    assert [m.value for m in dlq] == [bad]
    headers = dict(dlq[0].headers)  # the one DLQ envelope (walduck/dlq.py): reason = class, detail = text
    assert headers["reason"] == b"malformed" and headers["detail"] == b"insert record without new row"
