"""A build's journal replay with its partition rows appended at the end ends where the delta-by-delta replay
ends (issue 15).

The old replay applied each journaled delta in turn (``ContentWriter.apply_delta``: delete the named ids, insert
the upserts) right after the snapshot's 1M-row insert; its DELETEs hit rows the same transaction had inserted,
which made DuckDB log every appended row into its WAL and checkpoint inside the commit (5.4 s of a 21.8 s
rebuild of all, docs/performance.md). The new one leaves the replayed rows out of the snapshot
(``without_replayed``) and appends what the journal leaves in place in one INSERT (``ContentWriter.replay``).
The oracle here is the old path itself, run on a second DuckDB over the same rows: both must hold the same
partition and dataset rows, for any journal (restricted and unrestricted deletes, partitions moving between
datasets, dataset deletes), any rows older than the build, emptied tables or not, a bulk or a listed snapshot.
"""

from __future__ import annotations

import os
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.context import ddl
from sinks.context.content import ContentWriter, without_replayed
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.pgsource import CatalogSnapshot
from walduck.deltas import Delta, DeltaKind, ShardChange

_PIDS = ["p1", "p2", "p3", "p4", "p5"]
_DIDS = ["A", "B", "C", "D"]


def _row(pid: str, did: str | None, tag: str) -> dict[str, Any]:
    row: dict[str, Any] = {"id": pid, "file_path": f"{did}/{pid}-{tag}.parquet", "row_count": len(tag)}
    if did is not None:
        row["dataset_id"] = did
    return row


def _delta(dataset_id: str | None, upserts: list[dict[str, Any]], deletes: list[str], drop: bool) -> Delta:
    return Delta(
        DeltaKind.DELTA, 0, 0, 0, 1, 1, "2024-01-01T00:00:00+00:00", dataset_id=dataset_id,
        dataset={"id": dataset_id, "deleted": True} if drop and dataset_id else None,
        shards={"2024-01-01": ShardChange(upserts=upserts, deletes=deletes)},
    )  # fmt: skip


def _context(older: list[dict[str, Any]]) -> tuple[duckdb.DuckDBPyConnection, ContentWriter]:
    cur = duckdb.connect()
    cur.execute(ddl.TABLES)
    writer = ContentWriter("/data")
    for did in _DIDS:
        cur.execute(f"INSERT INTO {WD}.datasets (id, shard, slug) VALUES (?, 0, ?)", [did, did])
    writer.insert_partitions(cur, older, 1, "A")
    return cur, writer


def _state(cur: duckdb.DuckDBPyConnection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    parts = cur.execute(f"SELECT * FROM {WD}.partitions ORDER BY ALL").fetchall()
    datasets = cur.execute(f"SELECT id FROM {WD}.datasets ORDER BY ALL").fetchall()
    return parts, datasets


def _as_snapshot(rows: list[dict[str, Any]], bulk: bool) -> CatalogSnapshot:
    if not bulk:
        return CatalogSnapshot(7, [], [], [], rows)
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "dataset_id": pa.array([r.get("dataset_id") for r in rows], pa.string()),
        }
    )
    return CatalogSnapshot(7, [], [], [], [], table)


def _snapshot_rows(snap: CatalogSnapshot, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The snapshot's rows as dicts (a bulk snapshot keeps the rows at the positions its table kept)."""
    if snap.partitions_table is None:
        return list(snap.partitions)
    kept = list(
        zip(
            snap.partitions_table["id"].to_pylist(),
            snap.partitions_table["dataset_id"].to_pylist(),
            strict=True,
        )
    )
    out, i = [], 0
    for r in rows:
        if i < len(kept) and (r["id"], r.get("dataset_id")) == kept[i]:
            out.append(r)
            i += 1
    assert i == len(kept)
    return out


def _build(
    older: list[dict[str, Any]],
    snapshot: list[dict[str, Any]],
    journal: list[tuple[Delta, int]],
    wiped: bool,
    bulk: bool,
    new: bool,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    cur, writer = _context(older)
    cur.begin()
    if wiped:
        cur.execute(f"DELETE FROM {WD}.partitions")
    if new:
        kept = _snapshot_rows(
            without_replayed(_as_snapshot(snapshot, bulk), [d for d, _ in journal]), snapshot
        )
        for r in kept:
            writer.insert_partitions(cur, [r], 2, None)
        writer.replay(cur, journal, wiped)
    else:
        for r in snapshot:
            writer.insert_partitions(cur, [r], 2, None)
        for delta, shard in journal:
            writer.apply_delta(cur, delta, shard)
    cur.commit()
    return _state(cur)


_did = st.sampled_from([*_DIDS, None])
_rows = st.lists(st.tuples(st.sampled_from(_PIDS), st.sampled_from(_DIDS)), max_size=8)
_deltas = st.lists(
    st.tuples(
        _did,
        st.lists(st.tuples(st.sampled_from(_PIDS), _did), max_size=3),
        st.lists(st.sampled_from(_PIDS), max_size=3),
        st.booleans(),
        st.integers(min_value=0, max_value=2),
    ),
    max_size=6,
)


@settings(max_examples=int(os.environ.get("WALDUCK_HYPOTHESIS_EXAMPLES", "200")), deadline=None)
@given(older=_rows, snapshot=_rows, deltas=_deltas, wiped=st.booleans(), bulk=st.booleans())
def test_the_appended_replay_ends_where_the_delta_by_delta_replay_ends(
    older: list[tuple[str, str]],
    snapshot: list[tuple[str, str]],
    deltas: list[tuple[str | None, list[tuple[str, str | None]], list[str], bool, int]],
    wiped: bool,
    bulk: bool,
) -> None:
    journal = [
        (
            _delta(did, [_row(pid, owner, f"j{i}") for pid, owner in ups], dels, drop and not ups),
            shard,
        )
        for i, (did, ups, dels, drop, shard) in enumerate(deltas)
    ]
    old = [_row(pid, did, "o") for pid, did in older]
    snap = [_row(pid, did, "s") for pid, did in snapshot]
    expected = _build(old, snap, journal, wiped, bulk, new=False)
    assert _build(old, snap, journal, wiped, bulk, new=True) == expected


def test_a_dataset_dropped_and_a_partition_moved_in_the_journal() -> None:
    """Hand-picked: the journal moves p1 from A to B (B's restricted delete keeps A's snapshot row), deletes
    dataset C (its snapshot rows go) and re-adds p4 after an unrestricted delete removed it everywhere."""
    snap = [_row("p1", "A", "s"), _row("p2", "C", "s"), _row("p4", "A", "s"), _row("p4", "B", "s")]
    journal = [
        (_delta("B", [_row("p1", "B", "j0")], [], False), 0),
        (_delta("C", [], [], True), 0),
        (_delta(None, [], ["p4"], False), 1),
        (_delta("A", [_row("p4", "A", "j3")], [], False), 1),
    ]
    for wiped in (True, False):
        for bulk in (True, False):
            expected = _build([], snap, journal, wiped, bulk, new=False)
            got = _build([], snap, journal, wiped, bulk, new=True)
            assert got == expected
            assert sorted((r[0], r[1], r[6]) for r in got[0]) == [
                ("p1", "A", "A/p1-s.parquet"),
                ("p1", "B", "B/p1-j0.parquet"),
                ("p4", "A", "A/p4-j3.parquet"),
            ]
