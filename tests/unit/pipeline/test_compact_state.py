"""The compactor's compact partition state (issue 15): a tuple per visible partition, repeated strings interned;
deltas and snapshots carry the same dicts as before, and an entry of another shape is kept as it came."""

from __future__ import annotations

from pipeline.compaction import Compactor, compact_entry, entry_dict, partition_entry
from pipeline.snapshot import SnapshotHead, decode_snapshot, encode_chunks
from walduck.deltas import PARTITION_FIELDS, Delta, DeltaKind, ShardChange


def _row(i: int) -> dict[str, object]:
    # every string freshly made, as a decoded record's are
    return {
        "id": f"p{i}",
        "dataset_id": "".join(["ds", "-1"]),
        "manifest_id": "".join(["m", "-1"]),
        "manifest_shard": "".join(["2026", "-12"]),
        "storage_target_id": "".join(["st", "-1"]),
        "file_path": f"f/{i}.parquet",
        "file_format": "".join(["par", "quet"]),
        "start_time": "2026-12-01T00:00:00+00:00",
        "end_time": "2026-12-02T00:00:00+00:00",
        "row_count": i,
        "file_size_bytes": 10 * i,
        "metadata": {"tableName": "".join(["ev", "ents"])},
    }


def _delta(upserts: list[dict[str, object]]) -> Delta:
    return Delta(
        kind=DeltaKind.DELTA,
        src_partition=0,
        src_offset_from=0,
        src_offset_to=0,
        lsn_from=1,
        lsn_to=1,
        commit_ts_max="2026-12-04T00:00:00+00:00",
        dataset_id="ds-1",
        shards={"2026-12": ShardChange(upserts=upserts, published_manifest_id="m-1")},
    )


def test_entry_round_trip_and_interning() -> None:
    a, b = partition_entry(_row(1), None), partition_entry(_row(2), None)
    assert tuple(a) == PARTITION_FIELDS
    ta, tb = compact_entry(a), compact_entry(b)
    assert isinstance(ta, tuple) and entry_dict(ta) == a and list(entry_dict(ta)) == list(PARTITION_FIELDS)
    for name in (
        "dataset_id",
        "manifest_id",
        "manifest_shard",
        "storage_target_id",
        "file_format",
        "table_name",
    ):
        i = PARTITION_FIELDS.index(name)
        assert ta[i] is tb[i], name


def test_entry_of_another_shape_is_kept_as_it_came() -> None:
    full = partition_entry(_row(1), None)
    odd = {k: v for k, v in full.items() if k != "partition_key"}  # e.g. a delta of an older version
    compactor = Compactor(0)
    compactor.apply_delta(_delta([full, {**odd, "id": "p2"}]))
    state = compactor.shards[("ds-1", "2026-12")].partitions
    assert isinstance(state["p1"], tuple) and state["p2"] == {**odd, "id": "p2"}
    assert compactor.state_view()["shards"][("ds-1", "2026-12")][1] == {"p1": full, "p2": {**odd, "id": "p2"}}
    chunks = encode_chunks(compactor, 1)
    head = SnapshotHead(0, "c", "d", "g", 1, compactor.covered_to, 0, len(chunks), 0, 2, "t")
    restored = decode_snapshot(head, dict(enumerate(chunks)))
    assert restored.state_view() == compactor.state_view()
    assert isinstance(restored.shards[("ds-1", "2026-12")].partitions["p1"], tuple)
