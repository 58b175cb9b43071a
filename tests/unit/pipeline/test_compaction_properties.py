"""Property tests: random catalog histories -> records -> random flush windows -> deltas == truth."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.compaction import Compactor, restore_from_deltas
from support.catalog_model import APPEND_HEAVY, OPERATIONS, CatalogModel
from support.reference_consumer import replay
from walduck.deltas import PARTITION_FIELDS, Delta, DeltaKind

ops_strategy = st.lists(st.sampled_from(OPERATIONS), min_size=1, max_size=60)


def run_windows(records, flush_points: set[int], src_partition: int = 0) -> list[Delta]:
    compactor = Compactor(src_partition)
    out: list[Delta] = []
    for offset, rec in enumerate(records):
        compactor.feed(rec, offset)
        if offset in flush_points:
            out += compactor.flush()
    out += compactor.flush()
    assert compactor.clean
    assert not compactor.drain_rejected()
    return out


def roundtrip(deltas: list[Delta]) -> list[Delta]:
    return [Delta.from_bytes(d.to_bytes()) for d in deltas]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), ops=ops_strategy, data=st.data())
def test_replayed_deltas_equal_visible_set(seed: int, ops: list[str], data: st.DataObject) -> None:
    model = CatalogModel(seed=seed)
    model.run(["create_dataset"] * (seed % 4) + ops)
    n = len(model.records)
    flush_points = set(data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=n)))
    deltas = roundtrip(run_windows(model.records, flush_points))
    assert replay(deltas) == model.visible()
    for delta in deltas:
        for change in delta.shards.values():
            for entry in change.upserts:
                assert set(entry) == set(PARTITION_FIELDS)
            # net effect: a partition appears at most once per delta
            ids = [e["id"] for e in change.upserts] + change.deletes
            assert len(ids) == len(set(ids))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), ops=ops_strategy, data=st.data())
def test_applying_any_delta_twice_changes_nothing(seed: int, ops: list[str], data: st.DataObject) -> None:
    model = CatalogModel(seed=seed)
    model.run(["create_dataset"] * (seed % 4) + ops)
    deltas = run_windows(model.records, set())
    if not deltas:
        return
    dup_at = data.draw(st.integers(0, len(deltas) - 1))
    with_dup = [*deltas[: dup_at + 1], deltas[dup_at], *deltas[dup_at + 1 :]]
    with_dup += deltas[: data.draw(st.integers(0, len(deltas)))]  # a whole re-delivery of a prefix too
    assert replay(with_dup) == replay(deltas) == model.visible()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), ops=ops_strategy, data=st.data())
def test_crash_mid_produce_restore_resumes_without_gap_or_duplicate(
    seed: int, ops: list[str], data: st.DataObject
) -> None:
    """Deltas topic cut at any point (even inside a window's group) -> restore -> same final result."""
    model = CatalogModel(seed=seed)
    model.run(["create_dataset"] * (seed % 4) + ops)
    records = model.records
    n = len(records)
    flush_points = set(data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=n)))
    full = run_windows(records, flush_points)
    cut = data.draw(st.integers(0, len(full)))
    topic = roundtrip(full[:cut])
    restored = restore_from_deltas(0, topic)
    compactor = restored.compactor
    start = 0 if restored.resume_offset is None else restored.resume_offset
    for offset in range(start, n):
        compactor.feed(records[offset], offset)
        if offset in flush_points:
            topic += compactor.flush()
    topic += compactor.flush()
    assert replay(topic) == model.visible()
    # no duplicate: per (src partition, dataset, kind) the covered offsets strictly increase
    last: dict[tuple, int] = {}
    for d in topic:
        mark = (d.src_partition, d.dataset_id, d.kind)
        assert d.src_offset_to > last.get(mark, -1), "duplicate or regressing delta"
        last[mark] = d.src_offset_to


def test_supersede_is_one_delta_with_deletes_and_upserts() -> None:
    model = CatalogModel(seed=1)
    ds = model.create_dataset()
    model.append(ds, day=0)
    model.append(ds, day=0)
    compactor = Compactor(0)
    for offset, rec in enumerate(model.records):
        compactor.feed(rec, offset)
    first = compactor.flush()
    old_ids = {p for p in model.partitions}
    base = len(model.records)
    model.new_version(ds)
    for offset, rec in enumerate(model.records[base:], start=base):
        compactor.feed(rec, offset)
    deltas = compactor.flush()
    assert len(deltas) == 1
    (change,) = deltas[0].shards.values()
    assert set(change.deletes) == old_ids
    assert {u["id"] for u in change.upserts} == set(model.partitions) - old_ids
    assert change.published_manifest_id != first[0].shards[next(iter(first[0].shards))].published_manifest_id


def test_touch_only_and_invisible_inserts_produce_no_delta() -> None:
    model = CatalogModel(seed=2)
    ds = model.create_dataset()
    model.append(ds, day=0)
    model.new_version(ds)
    compactor = Compactor(0)
    for offset, rec in enumerate(model.records):
        compactor.feed(rec, offset)
    compactor.flush()
    base = len(model.records)
    model.touch(ds)
    model.insert_into_superseded(ds)
    for offset, rec in enumerate(model.records[base:], start=base):
        compactor.feed(rec, offset)
    assert compactor.flush() == []


def test_dataset_changes_travel_and_heartbeat_closes_its_window() -> None:
    model = CatalogModel(seed=3)
    ds = model.create_dataset()
    model.archive(ds)
    model.metadata(ds)
    model.heartbeat()
    model.storage_target()
    compactor = Compactor(0)
    for offset, rec in enumerate(model.records):
        compactor.feed(rec, offset)
    deltas = compactor.flush()
    kinds = [(d.kind, d.dataset_id) for d in deltas]
    assert kinds == [(DeltaKind.DELTA, ds), (DeltaKind.HEARTBEAT, None), (DeltaKind.DELTA, None)]
    assert deltas[0].dataset["status"] == "inactive"
    assert deltas[0].dataset["metadata"]["iam"]["readScopes"] != ["timestore:read"]
    assert len(deltas[0].schema_versions) == 1
    assert deltas[1].lsn_to == model.records[-2].lsn
    assert deltas[2].storage_targets[0]["config"]["root"].startswith("/data/")
    # the heartbeat rides in the dataset changes' window (after its deltas); the storage target is a window
    # of its own, and windows never overlap
    assert (deltas[0].src_offset_from, deltas[0].src_offset_to) == (
        deltas[1].src_offset_from,
        deltas[1].src_offset_to,
    )
    assert deltas[1].src_offset_to < deltas[2].src_offset_from


def test_watermarks_cost_one_heartbeat_delta_per_window() -> None:
    """One watermark after every transaction (what the connector sends at low rates) must not cut the window
    into one per transaction: the window holds the transactions and ends with ONE heartbeat delta at the
    newest watermark."""
    from dataclasses import replace

    model = CatalogModel(seed=11)
    ds = model.create_dataset()
    model.heartbeat()
    template = model.records[-1]
    for _ in range(5):
        model.append(ds)
    records = []
    for rec in model.records:
        records.append(rec)
        if rec.kind.value == "change" and rec.tx_index == rec.tx_size - 1:  # end of a transaction share
            records.append(replace(template, lsn=rec.commit_lsn + 1, commit_lsn=rec.commit_lsn + 1))
    compactor = Compactor(0)
    for offset, rec in enumerate(records):
        compactor.feed(rec, offset)
    deltas = compactor.flush()
    heartbeats = [d for d in deltas if d.kind is DeltaKind.HEARTBEAT]
    assert len(heartbeats) == 1 and deltas[-1] is heartbeats[0]
    assert heartbeats[0].lsn_to == records[-1].commit_lsn
    assert len({(d.src_offset_from, d.src_offset_to) for d in deltas}) == 1


def test_split_transaction_is_not_flushed_half() -> None:
    model = CatalogModel(seed=4)
    ds = model.create_dataset()
    model.append(ds, day=0)
    compactor = Compactor(0)
    records = model.records
    for offset, rec in enumerate(records[:-2]):
        compactor.feed(rec, offset)
    mid = compactor.flush()
    assert all(not d.shards for d in mid), "a partition of a half-received transaction leaked"
    assert not compactor.clean
    for offset in range(len(records) - 2, len(records)):
        compactor.feed(records[offset], offset)
    assert replay(mid + compactor.flush()) == model.visible()


def test_compaction_ratio_append_heavy() -> None:
    """Raw change records per delta entry on an append-heavy mix, flushed every ~50 records."""
    rng = random.Random(7)
    model = CatalogModel(seed=7)
    for _ in range(8):
        model.create_dataset()
    model.run([rng.choice(APPEND_HEAVY) for _ in range(2000)])
    flush_points = set(range(49, len(model.records), 50))
    deltas = run_windows(model.records, flush_points)
    entries = sum(d.entry_count for d in deltas)
    ratio = len(model.records) / entries
    print(f"compaction ratio: {len(model.records)} records / {entries} entries = {ratio:.2f}")
    assert replay(deltas) == model.visible()
    assert ratio > 1.0


def test_connector_resend_produces_nothing_new() -> None:
    model = CatalogModel(seed=5)
    ds = model.create_dataset()
    model.append(ds, day=0)
    model.retention(ds)
    compactor = Compactor(0)
    for offset, rec in enumerate(model.records):
        compactor.feed(rec, offset)
    compactor.flush()
    base = len(model.records)
    model.resend()
    for offset, rec in enumerate(model.records[base:], start=base):
        compactor.feed(rec, offset)
    assert compactor.flush() == []


def test_restore_after_a_window_cut_between_its_deltas() -> None:
    model = CatalogModel(seed=6)
    datasets = [model.create_dataset() for _ in range(3)]
    base = len(model.records)
    for _ in range(3):
        for ds in datasets:
            model.append(ds)
    compactor = Compactor(0)
    topic: list[Delta] = []
    for offset, rec in enumerate(model.records[:base]):
        compactor.feed(rec, offset)
    topic += compactor.flush()
    for offset, rec in enumerate(model.records[base:], start=base):
        compactor.feed(rec, offset)
    window = compactor.flush()
    assert [d.dataset_id for d in window] == sorted(datasets)
    topic += window[:1]  # crash after the first of three deltas was acknowledged
    restored = restore_from_deltas(0, topic)
    assert restored.resume_offset == window[0].src_offset_from
    again = restored.compactor
    for offset in range(restored.resume_offset, len(model.records)):
        again.feed(model.records[offset], offset)
    rest = again.flush()
    assert [d.dataset_id for d in rest] == sorted(datasets)[1:]
    assert [d.to_bytes() for d in rest] == [d.to_bytes() for d in window[1:]]
    assert replay(topic + rest) == model.visible()


def test_global_change_at_a_watermark_lsn_is_not_taken_for_a_resend() -> None:
    """The connector's watermark sits at a commit's end LSN, where the next transaction's commit record may
    start: a storage-target change committed exactly there must still reach the contexts."""
    from dataclasses import replace

    model = CatalogModel(seed=5)
    model.heartbeat()
    model.storage_target()
    heartbeat, change = model.records[-2], model.records[-1]
    at = change.commit_lsn
    heartbeat = replace(heartbeat, lsn=at, commit_lsn=at)
    compactor = Compactor(0)
    compactor.feed(heartbeat, 0)
    compactor.feed(change, 1)
    deltas = compactor.flush()
    assert [(d.kind, d.dataset_id) for d in deltas] == [(DeltaKind.HEARTBEAT, None), (DeltaKind.DELTA, None)]
    assert deltas[1].storage_targets, "the storage-target change was dropped as a re-send"
