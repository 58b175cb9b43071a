"""A half-received transaction share holds at most SHARE_DECODED_SLOTS decoded records (issue 15): past that it
holds the records' bytes and decodes each again when the share completes, with the same deltas, state and DLQ
records as a share holding every record decoded."""

from __future__ import annotations

from pipeline.compaction import SHARE_DECODED_SLOTS, Compactor
from walduck.catalog_tables import DATASETS, MANIFESTS, PARTITIONS
from walduck.records import ChangeRecord, Kind, Op, Source

LSN = 1000
TS = "2026-12-04T00:00:00+00:00"
PER_DATASET = 3 * SHARE_DECODED_SLOTS


def _rec(table: str, row: dict[str, object], dataset: str, index: int, size: int) -> ChangeRecord:
    return ChangeRecord(
        kind=Kind.CHANGE,
        source=Source.SNAPSHOT,
        lsn=LSN,
        commit_lsn=LSN,
        commit_ts=TS,
        table=table,
        op=Op.READ,
        key={"id": row["id"]},
        new=row,
        dataset_id=dataset,
        tx_index=index,
        tx_size=size,
    )


def _snapshot(datasets: list[str]) -> list[ChangeRecord]:
    """The connector's initial snapshot: one share per dataset (its dataset row, its manifest, its partitions),
    tables in order and the partitions in id order, so every share stays open until its last partition."""
    size = 2 + PER_DATASET
    out = [_rec(DATASETS, {"id": ds, "slug": ds}, ds, 0, size) for ds in datasets]
    out += [
        _rec(
            MANIFESTS,
            {"id": f"m-{ds}", "dataset_id": ds, "manifest_shard": "2026-12-04", "status": "published"},
            ds,
            1,
            size,
        )
        for ds in datasets
    ]
    for i in range(PER_DATASET):
        for ds in datasets:
            row = {
                "id": f"p-{ds}-{i:05d}",
                "dataset_id": ds,
                "manifest_id": f"m-{ds}",
                "manifest_shard": "2026-12-04",
                "storage_target_id": "st-1",
                "file_path": f"{ds}/{i}.parquet",
                "file_format": "parquet",
                "start_time": TS,
                "end_time": TS,
                "row_count": i,
                "file_size_bytes": 10 * i,
                "metadata": {"tableName": "records"},
            }
            out.append(_rec(PARTITIONS, row, ds, 2 + i, size))
    return out


def _decoded_slots(compactor: Compactor) -> list[int]:
    return [
        sum(isinstance(slot, ChangeRecord) for _offset, slot in share.slots.values())
        for share in compactor._shares.values()
    ]


def test_a_big_share_holds_bytes_past_the_bound_and_seals_the_same_deltas() -> None:
    records = _snapshot(["ds-a", "ds-b", "ds-c"])
    plain, lean = Compactor(0), Compactor(0)
    worst = 0
    for offset, rec in enumerate(records):
        raw = rec.to_bytes()
        plain.feed(ChangeRecord.from_bytes(raw), offset)
        lean.feed(ChangeRecord.from_bytes(raw), offset, raw)
        if offset < len(records) - 3:  # the last record of each share completes it
            assert lean.flush() == [] and plain.flush() == []
            assert len(lean._shares) == min(offset + 1, 3)
            worst = max(worst, *_decoded_slots(lean))
            assert all(n <= SHARE_DECODED_SLOTS for n in _decoded_slots(lean))
    assert worst == SHARE_DECODED_SLOTS
    out_plain, out_lean = plain.flush(), lean.flush()
    assert [d.to_bytes() for d in out_lean] == [d.to_bytes() for d in out_plain]
    assert sum(d.entry_count for d in out_lean) == 3 * (PER_DATASET + 1)
    assert lean.state_view() == plain.state_view() and lean.state_partitions == 3 * PER_DATASET


def test_an_expired_big_share_sends_every_record_decoded_to_the_dlq() -> None:
    records = _snapshot(["ds-a"])[:-1]  # its last partition never comes
    later = ChangeRecord(
        kind=Kind.HEARTBEAT, source=Source.STREAM, lsn=LSN + 1, commit_lsn=LSN + 1, commit_ts=TS
    )
    compactor = Compactor(0, share_max_records=1)
    for offset, rec in enumerate(records):
        compactor.feed(ChangeRecord.from_bytes(rec.to_bytes()), offset, rec.to_bytes())
    assert _decoded_slots(compactor) == [SHARE_DECODED_SLOTS]
    compactor.feed(later, len(records))
    assert compactor.expire(0.0) == 1 and compactor.clean
    rejected = compactor.drain_rejected()
    assert [r.offset for r in rejected] == list(range(len(records)))
    assert [r.record for r in rejected] == records
    assert compactor.state_partitions == 0


def test_released_bytes_count_the_buffered_bytes_once_the_share_is_applied() -> None:
    records = _snapshot(["ds-a"])
    raws = [rec.to_bytes() for rec in records]
    compactor = Compactor(0)
    for offset, raw in enumerate(raws[:-1]):
        compactor.feed(ChangeRecord.from_bytes(raw), offset, raw)
    held = sum(len(slot) for _o, slot in compactor._shares["ds-a"].slots.values() if type(slot) is bytes)
    assert held == sum(map(len, raws[SHARE_DECODED_SLOTS:-1])) and compactor.take_released() == 0
    compactor.feed(ChangeRecord.from_bytes(raws[-1]), len(raws) - 1, raws[-1])
    assert compactor.clean and compactor.take_released() == held and compactor.take_released() == 0


def test_the_runner_trims_the_allocator_once_enough_share_bytes_were_let_go(monkeypatch) -> None:
    from pipeline import runner as runner_mod
    from walduck.config import WalduckSettings

    calls: list[int] = []
    monkeypatch.setattr(runner_mod, "release_free_memory", lambda: calls.append(1) or True)
    runner = runner_mod.CompactorRunner(WalduckSettings())
    compactor = Compactor(0)
    runner.work[0] = runner_mod.PartitionWork(compactor, -1)
    compactor.released_bytes = runner_mod.TRIM_AFTER_BYTES - 1
    runner._release_memory()
    assert calls == [] and runner.released_bytes == runner_mod.TRIM_AFTER_BYTES - 1
    compactor.released_bytes = 1
    runner._release_memory()
    assert calls == [1] and runner.released_bytes == 0 and runner.memory_trims == 1
    runner._release_memory()
    assert calls == [1]


def test_equal_flat_partition_keys_share_one_dict() -> None:
    from pipeline.compaction import compact_entry, entry_dict, partition_entry
    from walduck.deltas import PARTITION_FIELDS

    def row(i: int, key: object) -> dict[str, object]:
        return {"id": f"p{i}", "file_path": f"f{i}", "partition_key": key, "metadata": {}}

    a = compact_entry(partition_entry(row(1, {"dataset": "d", "window": "2026-12-04"}), None))
    b = compact_entry(partition_entry(row(2, {"dataset": "d", "window": "2026-12-04"}), None))
    ix = PARTITION_FIELDS.index("partition_key")
    assert a[ix] is b[ix] and entry_dict(a)["partition_key"] == {"dataset": "d", "window": "2026-12-04"}
    for one, other in (
        ({"n": 1}, {"n": True}),  # equal in Python, not the same JSON
        ({"n": 1}, {"n": 1.0}),
        ({"a": "x", "b": "y"}, {"b": "y", "a": "x"}),  # key order is kept
    ):
        x = entry_dict(compact_entry(partition_entry(row(1, one), None)))["partition_key"]
        y = entry_dict(compact_entry(partition_entry(row(2, other), None)))["partition_key"]
        assert x is not y and list(x.items()) == list(one.items()) and list(y.items()) == list(other.items())
        assert [type(v) for v in x.values()] == [type(v) for v in one.values()]
        assert [type(v) for v in y.values()] == [type(v) for v in other.values()]
    nested = {"dataset": "d", "window": {"from": "a"}}
    c = entry_dict(compact_entry(partition_entry(row(3, nested), None)))["partition_key"]
    d = entry_dict(compact_entry(partition_entry(row(4, dict(nested)), None)))["partition_key"]
    assert c == d == nested and c is not d
    assert entry_dict(compact_entry(partition_entry(row(5, "k=v"), None)))["partition_key"] == "k=v"
