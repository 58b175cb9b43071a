"""Property tests: random catalog histories -> records -> random flush windows -> deltas == truth."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.compaction import Compactor, restore_from_deltas
from support.catalog_model import APPEND_HEAVY, CatalogModel
from support.compaction_runs import OPS, assert_no_duplicates, draw_flush_points, feed_windows, random_history
from support.reference_consumer import replay
from walduck.deltas import PARTITION_FIELDS, Delta, DeltaKind


def run_windows(records, flush_points: set[int], src_partition: int = 0) -> list[Delta]:
    compactor = Compactor(src_partition)
    out = feed_windows(compactor, records, flush_points)
    assert compactor.clean
    assert not compactor.drain_rejected()
    return out


def roundtrip(deltas: list[Delta]) -> list[Delta]:
    return [Delta.from_bytes(d.to_bytes()) for d in deltas]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), ops=OPS, data=st.data())
def test_replayed_deltas_equal_visible_set(seed: int, ops: list[str], data: st.DataObject) -> None:
    model = random_history(seed, ops)
    flush_points = draw_flush_points(data, len(model.records))
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
@given(seed=st.integers(0, 2**32), ops=OPS, data=st.data())
def test_applying_any_delta_twice_changes_nothing(seed: int, ops: list[str], data: st.DataObject) -> None:
    model = random_history(seed, ops)
    deltas = run_windows(model.records, set())
    if not deltas:
        return
    dup_at = data.draw(st.integers(0, len(deltas) - 1))
    with_dup = [*deltas[: dup_at + 1], deltas[dup_at], *deltas[dup_at + 1 :]]
    with_dup += deltas[: data.draw(st.integers(0, len(deltas)))]  # a whole re-delivery of a prefix too
    assert replay(with_dup) == replay(deltas) == model.visible()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), ops=OPS, data=st.data())
def test_crash_mid_produce_restore_resumes_without_gap_or_duplicate(
    seed: int, ops: list[str], data: st.DataObject
) -> None:
    """Deltas topic cut at any point (even inside a window's group) -> restore -> same final result."""
    model = random_history(seed, ops)
    records = model.records
    flush_points = draw_flush_points(data, len(records))
    full = run_windows(records, flush_points)
    cut = data.draw(st.integers(0, len(full)))
    topic = roundtrip(full[:cut])
    restored = restore_from_deltas(0, topic)
    topic += feed_windows(restored.compactor, records, flush_points, restored.resume_offset)
    assert replay(topic) == model.visible()
    assert_no_duplicates(topic)


def test_supersede_is_one_delta_with_deletes_and_upserts() -> None:
    model = CatalogModel(seed=1)
    ds = model.create_dataset()
    model.append(ds, day=0)
    model.append(ds, day=0)
    compactor = Compactor(0)
    first = feed_windows(compactor, model.records)
    old_ids = {p for p in model.partitions}
    base = len(model.records)
    model.new_version(ds)
    deltas = feed_windows(compactor, model.records, start=base)
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
    feed_windows(compactor, model.records)
    base = len(model.records)
    model.touch(ds)
    model.insert_into_superseded(ds)
    assert feed_windows(compactor, model.records, start=base) == []


def test_dataset_changes_travel_and_heartbeat_closes_its_window() -> None:
    model = CatalogModel(seed=3)
    ds = model.create_dataset()
    model.archive(ds)
    model.metadata(ds)
    model.heartbeat()
    model.storage_target()
    deltas = feed_windows(Compactor(0), model.records)
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
    deltas = feed_windows(Compactor(0), records)
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
    mid = feed_windows(compactor, records[:-2])
    assert all(not d.shards for d in mid), "a partition of a half-received transaction leaked"
    assert not compactor.clean
    assert replay(mid + feed_windows(compactor, records, start=len(records) - 2)) == model.visible()


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
    feed_windows(compactor, model.records)
    base = len(model.records)
    model.resend()
    assert feed_windows(compactor, model.records, start=base) == []


def test_restore_after_a_window_cut_between_its_deltas() -> None:
    model = CatalogModel(seed=6)
    datasets = [model.create_dataset() for _ in range(3)]
    base = len(model.records)
    for _ in range(3):
        for ds in datasets:
            model.append(ds)
    compactor = Compactor(0)
    topic = feed_windows(compactor, model.records[:base])
    window = feed_windows(compactor, model.records, start=base)
    assert [d.dataset_id for d in window] == sorted(datasets)
    topic += window[:1]  # crash after the first of three deltas was acknowledged
    restored = restore_from_deltas(0, topic)
    assert restored.resume_offset == window[0].src_offset_from
    rest = feed_windows(restored.compactor, model.records, start=restored.resume_offset)
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


# ------------------------------------------------------------------ incomplete transactions expire (issue 15)


def _trailing_heartbeats(model: CatalogModel, n: int) -> list:
    out = []
    for _ in range(n):
        model.heartbeat()
        out.append(model.records[-1])
    return out


def _run_expiring(
    records: list, offsets: list[int], flush_points: set[int], max_records: int | None, max_age: float | None
) -> tuple[Compactor, list[Delta]]:
    compactor = Compactor(0, share_max_records=max_records, share_max_age_s=max_age)
    out: list[Delta] = []
    for offset, rec in zip(offsets, records, strict=True):
        compactor.feed(rec, offset)
        compactor.expire(offset * 0.01)  # any monotonic clock
        if offset in flush_points:
            out += compactor.flush()
    out += compactor.flush()
    return compactor, out


def _broken_history(seed: int, ops: list[str], data: st.DataObject):
    """A history with one record of one multi-record share lost, plus the oracle: the same history with
    every record of that share removed (what an expired share must amount to)."""
    model = CatalogModel(seed=seed)
    model.run(["create_dataset", "append", *ops])
    multi = [i for i, r in enumerate(model.records) if r.kind.value == "change" and r.tx_size >= 2]
    lost = data.draw(st.sampled_from(multi))
    victim = model.records[lost]
    same = [
        i
        for i, r in enumerate(model.records)
        if r.kind.value == "change"
        and (r.xid, r.commit_lsn, r.dataset_id) == (victim.xid, victim.commit_lsn, victim.dataset_id)
    ]
    share = set(same[: victim.tx_size])  # its first publication (a connector resend may follow: kept)
    if lost not in share:  # the victim was a resent record: lose it from the resend instead
        share = set(same[same.index(lost) - victim.tx_index :][: victim.tx_size])
    tail = _trailing_heartbeats(model, 30)
    records = model.records
    broken = [(i, r) for i, r in enumerate(records) if i != lost]
    oracle = [(i, r) for i, r in enumerate(records) if i not in share]
    return model, records, lost, share, broken, oracle, tail


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), ops=OPS, data=st.data())
def test_an_expired_share_amounts_to_a_share_never_sent(
    seed: int, ops: list[str], data: st.DataObject
) -> None:
    """One record of a transaction share lost upstream: the partition still ends clean (sealed past it), the
    share's other records are rejected as incomplete, and the deltas equal those of the same history
    without that share at all."""
    _model, records, lost, share, broken, oracle, _tail = _broken_history(seed, ops, data)
    n = len(records)
    flush_points = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n)))
    max_records = data.draw(st.integers(1, 25))
    max_age = data.draw(st.one_of(st.none(), st.floats(0.0, 0.2)))

    c_broken, d_broken = _run_expiring(
        [r for _, r in broken], [i for i, _ in broken], flush_points, max_records, max_age
    )
    c_oracle, d_oracle = _run_expiring(
        [r for _, r in oracle], [i for i, _ in oracle], flush_points, max_records, max_age
    )
    assert c_broken.clean, "the incomplete share was never expired: its partition is stopped"
    assert c_oracle.clean and not c_oracle.drain_rejected()
    rejected = c_broken.drain_rejected()
    assert {r.offset for r in rejected} <= share - {lost}
    assert all(
        r.reason_class in ("incomplete_transaction", "incomplete_transaction_expired") for r in rejected
    )
    assert replay(roundtrip(d_broken)) == replay(roundtrip(d_oracle))
    # the partition sealed past the share: the last delta covers the last offset fed
    assert d_broken and max(d.src_offset_to for d in d_broken) == n - 1


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), ops=OPS, data=st.data())
def test_restore_reprocessing_a_window_sealed_past_an_expired_share(
    seed: int, ops: list[str], data: st.DataObject
) -> None:
    """Crash at any point after a window was sealed past an expired share; the restored compactor expires
    it again at the window's boundary (whatever its own clock says) and the result is the same."""
    _model, records, _lost, _share, broken, oracle, _tail = _broken_history(seed, ops, data)
    n = len(records)
    flush_points = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n)))
    max_records = data.draw(st.integers(1, 10))
    _, full = _run_expiring([r for _, r in broken], [i for i, _ in broken], flush_points, max_records, None)
    _, truth = _run_expiring([r for _, r in oracle], [i for i, _ in oracle], set(), max_records, None)
    cut = data.draw(st.integers(0, len(full)))
    topic = roundtrip(full[:cut])
    restored = restore_from_deltas(0, topic)
    compactor = restored.compactor
    compactor.share_max_records = max_records + data.draw(st.integers(0, 20))  # another clock/bound
    start = 0 if restored.resume_offset is None else restored.resume_offset
    for offset, rec in broken:
        if offset < start:
            continue
        compactor.feed(rec, offset)
        compactor.expire(0.0)
        if offset in flush_points:
            topic += compactor.flush()
    topic += compactor.flush()
    assert compactor.clean
    assert replay(topic) == replay(truth)
    assert_no_duplicates(topic)


def test_one_record_of_a_two_record_share_expires_by_time_and_by_records() -> None:
    """The issue's case: tx_size=2, only tx_index=0 ever sent. Not expired while nothing later arrived;
    once a later transaction was seen, expired after the time bound (or the record bound) and the partition
    seals past it with the later transaction's delta."""
    from dataclasses import replace

    model = CatalogModel(seed=9)
    a, b = model.create_dataset(), model.create_dataset()
    base = len(model.records)
    model.append(a)
    stuck = next(r for r in model.records[base:] if r.tx_size >= 2 and r.tx_index == 0)
    compactor = Compactor(0, share_max_records=100, share_max_age_s=5.0)
    feed_windows(compactor, model.records[:base])
    offset = base
    compactor.feed(stuck, offset)
    assert not compactor.clean and compactor.expire(1000.0) == 0  # nothing later yet: may still come
    tail = len(model.records)
    model.append(b)
    for rec in model.records[tail:]:
        offset += 1
        compactor.feed(rec, offset)
    assert compactor.flush() == [], "sealed while a share is open"
    assert compactor.expire(1000.0) == 0  # overtaken: the clock starts now
    assert compactor.expire(1004.9) == 0
    assert compactor.expire(1005.0) == 1 and compactor.clean
    (rejected,) = compactor.drain_rejected()
    assert rejected.offset == base and rejected.reason_class == "incomplete_transaction_expired"
    assert f"1 of {stuck.tx_size} record(s) of key {a}" in rejected.reason
    deltas = compactor.flush()
    assert [d.dataset_id for d in deltas] == [b] and deltas[0].src_offset_to == offset
    assert replay(deltas)  # b's partition is visible

    # by records, no clock: another stuck share, then 100 later heartbeats
    again = replace(stuck, commit_lsn=model.lsn + 1, lsn=model.lsn + 1, xid=(stuck.xid or 0) + 1)
    offset += 1
    compactor.feed(again, offset)
    for hb in _trailing_heartbeats(model, 100):
        offset += 1
        compactor.feed(hb, offset)
        assert compactor.clean is False or hb is model.records[-1]
    assert compactor.expire(0.0) == 1 and compactor.clean
