"""Property tests (issue 15): restore from a state snapshot + the deltas after it == restore by full replay.

Random catalog histories and flush windows; a snapshot is taken at a random point where the live compactor is
at rest (as the runner does, inside the window's transaction), the deltas topic is cut at a random point at or
after it (a crash), and both restores must agree on the state and on every delta produced afterwards.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from pipeline.compaction import Compactor, restore_from_deltas
from pipeline.snapshot import BadSnapshot, SnapshotHead, decode_snapshot, encode_chunks, snapshot_due
from support.catalog_model import CatalogModel
from support.compaction_runs import OPS, draw_flush_points, feed_windows, random_history
from support.reference_consumer import replay
from walduck.deltas import Delta


def _head(compactor: Compactor, chunks: int, deltas_offset: int, sequence: int = 1) -> SnapshotHead:
    return SnapshotHead(
        src_partition=compactor.src_partition,
        changes_topic="c",
        deltas_topic="d",
        group_id="g",
        sequence=sequence,
        covered_to=compactor.covered_to,
        deltas_offset=deltas_offset,
        chunks=chunks,
        first_offset=0,
        entries=compactor.state_partitions,
        created_at="2026-12-04T00:00:00+00:00",
    )


def _snapshot(compactor: Compactor, deltas_offset: int, chunk_bytes: int) -> Compactor:
    """Encode, go through bytes, decode: what a restore gets from the state topic."""
    chunks = encode_chunks(compactor, 1, chunk_bytes)
    head = SnapshotHead.from_bytes(_head(compactor, len(chunks), deltas_offset).to_bytes())
    return decode_snapshot(head, dict(enumerate(chunks)))


def _at_least(snapshot: Compactor, replayed: Compactor) -> None:
    """The snapshot knows every commit LSN the replay knows, and more (commits that made no delta)."""
    for key, lsn in replayed.last_applied.items():
        assert snapshot.last_applied.get(key, -1) >= lsn, key


def _bytes(deltas: list[Delta]) -> list[bytes]:
    return [d.to_bytes() for d in deltas]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), ops=OPS, data=st.data())
def test_snapshot_plus_tail_restores_what_a_full_replay_restores(
    seed: int, ops: list[str], data: st.DataObject
) -> None:
    model = random_history(seed, ops)
    records = model.records
    flush_points = draw_flush_points(data, len(records))
    # the live run, remembering at every point where it is at rest the deltas produced so far
    live = Compactor(0)
    topic: list[Delta] = []
    rest_points: list[tuple[int, int]] = []  # (input offset fed, deltas in the topic)
    for offset, rec in enumerate(records):
        live.feed(rec, offset)
        if offset in flush_points:
            topic += live.flush()
            if live.at_rest:
                rest_points.append((offset, len(topic)))
    topic += live.flush()
    if not rest_points:
        return
    at, in_topic = data.draw(st.sampled_from(rest_points))
    # replay the live run up to the snapshot point to get the state the runner would have encoded
    snap_source = Compactor(0)
    for offset in range(at + 1):
        snap_source.feed(records[offset], offset)
        if offset in flush_points:
            snap_source.flush()
    assert snap_source.at_rest
    chunk_bytes = data.draw(st.sampled_from([64, 512, 1 << 20]))  # tiny chunks split shards across records
    restored_snapshot = _snapshot(snap_source, in_topic - 1, chunk_bytes)
    assert restored_snapshot.state_view() == snap_source.state_view()  # exact round trip, hidden included

    cut = data.draw(st.integers(in_topic, len(topic)))  # a crash at or after the snapshot
    kept = [Delta.from_bytes(b) for b in _bytes(topic[:cut])]
    full = restore_from_deltas(0, kept)
    tail = restore_from_deltas(0, kept[in_topic:], base=restored_snapshot)
    event(f"tail of {cut - in_topic} delta(s)" if cut > in_topic else "empty tail")
    if cut > in_topic:  # both hold back the same last (possibly cut) window
        assert tail.resume_offset == full.resume_offset
        assert tail.compactor.state_view(full=False) == full.compactor.state_view(full=False)
        _at_least(tail.compactor, full.compactor)
    else:  # the full replay re-processes the snapshot's own window; the snapshot already holds it
        assert tail.resume_offset == at + 1
    # what they produce from there on is identical, and the result is the catalog's truth
    after_full = feed_windows(full.compactor, records, flush_points, full.resume_offset)
    after_tail = feed_windows(tail.compactor, records, flush_points, tail.resume_offset)
    assert _bytes(after_tail) == _bytes(after_full)
    assert tail.compactor.state_view(full=False) == full.compactor.state_view(full=False)
    _at_least(tail.compactor, full.compactor)
    assert replay(kept + after_tail) == model.visible()


def test_an_empty_state_is_one_chunk_and_restores_to_nothing() -> None:
    compactor = Compactor(3)
    restored = _snapshot(compactor, -1, 1 << 20)
    assert restored.state_view() == compactor.state_view()
    assert restore_from_deltas(3, [], base=restored).resume_offset is None


def test_a_missing_or_foreign_chunk_is_refused() -> None:
    model = CatalogModel(seed=7)
    model.run(["create_dataset", "append", "append", "append", "new_version"])
    compactor = Compactor(0)
    feed_windows(compactor, model.records)
    chunks = encode_chunks(compactor, 5, 64)
    assert len(chunks) > 2
    head = _head(compactor, len(chunks), 10, sequence=5)
    missing = dict(enumerate(chunks))
    del missing[1]
    try:
        decode_snapshot(head, missing)
        raise AssertionError("a missing chunk was accepted")
    except BadSnapshot as exc:
        assert "chunk 1 missing" in str(exc)
    foreign = dict(enumerate(encode_chunks(compactor, 4, 64)))
    try:
        decode_snapshot(head, foreign)
        raise AssertionError("a chunk of another snapshot was accepted")
    except BadSnapshot as exc:
        assert "another snapshot" in str(exc)


def test_snapshot_due_bounds_the_tail_by_the_state() -> None:
    assert not snapshot_due(0, 0, 10, 1.0)
    assert not snapshot_due(9, 0, 10, 1.0)
    assert snapshot_due(10, 0, 10, 1.0)
    assert not snapshot_due(10_000, 20_000, 10, 1.0)  # tail below the state: not yet
    assert snapshot_due(20_000, 20_000, 10, 1.0)
    assert not snapshot_due(20_000, 20_000, 10, 1.0, enabled=False)
    # an old snapshot is renewed with anything produced since, however small the tail
    assert snapshot_due(1, 20_000, 10, 1.0, age_s=3600, max_age_s=3600)
    assert not snapshot_due(0, 20_000, 10, 1.0, age_s=7200, max_age_s=3600)
    assert not snapshot_due(1, 20_000, 10, 1.0, age_s=10, max_age_s=3600)
