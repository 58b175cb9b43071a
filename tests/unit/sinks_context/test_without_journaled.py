"""A build leaves out of its snapshot exactly the partitions the journal replay deletes (issue 15).

The replay deletes every id a journaled delta names (restricted to the delta's dataset when its owners are few
and known, by id alone otherwise) and re-inserts the upserts, so those rows end at the journal's state whatever
the snapshot held; a row the replay's DELETE would not match (another dataset's) must stay in the snapshot.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.context.build import ContextBuilder
from sinks.context.pgsource import CatalogSnapshot
from walduck.deltas import Delta, DeltaKind, ShardChange


def _delta(dataset_id: str | None, upserts: list[dict[str, Any]] = (), deletes: list[str] = ()) -> Delta:  # type: ignore[assignment]
    return Delta(
        DeltaKind.DELTA, 0, 0, 0, 1, 1, "2024-01-01T00:00:00+00:00", dataset_id=dataset_id,
        shards={"2024-01-01": ShardChange(upserts=list(upserts), deletes=list(deletes))},
    )  # fmt: skip


def _snapshot(rows: list[tuple[str, str]], bulk: bool) -> CatalogSnapshot:
    dicts = [{"id": pid, "dataset_id": did} for pid, did in rows]
    if bulk:
        table = pa.table({"id": [r[0] for r in rows], "dataset_id": [r[1] for r in rows]})
        return CatalogSnapshot(7, [], [], [], [], table)
    return CatalogSnapshot(7, [], [], [], dicts)


def _kept(snap: CatalogSnapshot) -> list[tuple[str, str]]:
    if snap.partitions_table is not None:
        t = snap.partitions_table
        return list(zip(t["id"].to_pylist(), t["dataset_id"].to_pylist(), strict=True))
    return [(p["id"], p["dataset_id"]) for p in snap.partitions]


def _builder(full_scan: bool = False) -> ContextBuilder:
    return ContextBuilder(SimpleNamespace(full_scan=full_scan))  # type: ignore[arg-type]


def test_named_rows_leave_the_snapshot_and_rows_of_other_datasets_stay() -> None:
    rows = [("p1", "A"), ("p2", "A"), ("p3", "A"), ("moved", "A"), ("p9", "B"), ("q1", "C")]
    journal = [
        (_delta("A", upserts=[{"id": "p1", "dataset_id": "A"}]), 0),
        (_delta("A", deletes=["p2"]), 0),
        # B's delete of "moved" is restricted to B: the replay keeps A's row, so the snapshot must too
        (_delta("B", deletes=["moved", "p9"]), 1),
        # unknown owner: the replay deletes by id in any dataset
        (_delta(None, deletes=["q1"]), 2),
    ]
    for bulk in (True, False):
        kept = _kept(_builder()._without_journaled(_snapshot(rows, bulk), journal))
        assert kept == [("p3", "A"), ("moved", "A")], bulk


def test_nothing_changes_without_a_journal_or_in_full_scan_mode() -> None:
    snap = _snapshot([("p1", "A")], bulk=True)
    assert _builder()._without_journaled(snap, []) is snap
    journal = [(_delta("A", deletes=["p1"]), 0)]
    assert _builder(full_scan=True)._without_journaled(snap, journal) is snap


_ids = st.sampled_from(["p1", "p2", "p3", "p4", "moved", None])
_dids = st.sampled_from(["A", "B", None])


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.tuples(_ids, _dids), max_size=30),
    chunks=st.integers(min_value=1, max_value=4),
    journal=st.lists(
        st.tuples(
            st.sampled_from(["A", "B", None]), st.lists(st.sampled_from(["p1", "p2", "p3", "p4", "moved"]))
        ),
        max_size=5,
    ),
)
def test_the_bulk_table_keeps_exactly_the_rows_the_row_list_keeps(
    rows: list[tuple[str | None, str | None]], chunks: int, journal: list[tuple[str | None, list[str]]]
) -> None:
    """The Arrow path (candidate lookup, zero-copy slices; a chunked table as a multi-connection read gives) and
    the per-row path keep the same rows in the same order."""
    size = max(1, len(rows) // chunks)
    pieces = [rows[i : i + size] for i in range(0, len(rows), size)] or [[]]
    table = pa.concat_tables(
        [
            pa.table(
                {
                    "id": pa.array([r[0] for r in p], pa.string()),
                    "dataset_id": pa.array([r[1] for r in p], pa.string()),
                }
            )
            for p in pieces
        ]
    )
    bulk = CatalogSnapshot(7, [], [], [], [], table)
    listed = CatalogSnapshot(7, [], [], [], [{"id": pid, "dataset_id": did} for pid, did in rows])
    deltas = [(_delta(did, deletes=deletes), 0) for did, deletes in journal]
    kept_bulk = _kept(_builder()._without_journaled(bulk, deltas))
    kept_list = _kept(_builder()._without_journaled(listed, deltas))
    assert kept_bulk == kept_list, (kept_bulk, kept_list)


def test_every_row_of_a_dataset_the_journal_deletes_leaves_the_snapshot() -> None:
    """A journaled dataset delete removes all its rows on replay; left in, they were the transaction's own rows
    deleted again (DuckDB then logs every appended row into its WAL at the commit)."""
    rows = [("p1", "A"), ("p2", "C"), ("p3", "C"), ("p4", "B")]
    drop = _delta("C")
    drop.dataset = {"id": "C", "deleted": True}
    for bulk in (True, False):
        kept = _kept(_builder()._without_journaled(_snapshot(rows, bulk), [(drop, 0)]))
        assert kept == [("p1", "A"), ("p4", "B")], bulk
