"""Content writers: a delta's rows (storage targets, datasets, schema versions, partitions, columns) into
the partition index, inside the caller's DuckDB transaction. Each returns the dataset ids it touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sinks.context import ddl
from sinks.context.datasets import dataset_row
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.naming import schema_columns
from sinks.context.pgsource import CatalogSnapshot, as_json_text
from sinks.context.values import FAR_FUTURE, FAR_PAST, as_dict, naive_utc
from walduck.deltas import Delta, DeltaKind
from walduck.locations import partition_location

_MAX_DATASET_DELETES = 3
"""Above this many datasets in one apply, one unrestricted DELETE scan beats a restricted DELETE per dataset."""


def _owner(row: dict[str, Any] | None, ds_id: str | None) -> str | None:
    """The dataset holding a partition row: its own ``dataset_id``, else the delta's (``None``: unknown)."""
    owner = (row.get("dataset_id") if row is not None else None) or ds_id
    return None if owner is None else str(owner)


def doomed_partitions(delta: Delta) -> dict[str | None, list[str]]:
    """The partition ids :meth:`ContentWriter.apply_delta` deletes (every delete, and every upsert before its
    insert), grouped by the dataset holding them (``None``: unknown)."""
    ds_id = delta.dataset_id
    deletes = [str(pid) for change in delta.shards.values() for pid in change.deletes]
    doomed: dict[str | None, list[str]] = {_owner(None, ds_id): deletes} if deletes else {}
    for change in delta.shards.values():
        for u in change.upserts:
            doomed.setdefault(_owner(u, ds_id), []).append(str(u["id"]))
    return doomed


def restricted_by_dataset(by_dataset: dict[str | None, list[str]]) -> bool:
    """Whether those deletes are restricted to their datasets (else by id in any dataset)."""
    return None not in by_dataset and len(by_dataset) <= _MAX_DATASET_DELETES


def deleted_datasets(deltas: Sequence[Delta]) -> set[str]:
    """The datasets a replay of ``deltas`` deletes (:meth:`ContentWriter.apply_delta`: every row of them)."""
    return {
        str(delta.dataset.get("id") or delta.dataset_id)
        for delta in deltas
        if delta.dataset is not None and delta.dataset.get("deleted")
    }


def without_replayed(snap: CatalogSnapshot, deltas: list[Delta]) -> CatalogSnapshot:
    """``snap`` without the partitions the replay of ``deltas`` (a build's journal) deletes.

    Replaying the journal deletes every named id and re-inserts the upserts, so such a row ends at the state of
    the last journaled delta naming it whatever the snapshot held; a dataset the journal deletes loses every
    row. Leaving those rows out makes the build a pure append: the replay's DELETEs then hit none of the rows
    the transaction just inserted (a DELETE of a transaction's own appended rows makes DuckDB log them all into
    its WAL at the commit, and checkpoint there at 1M rows: docs/performance.md). The rows are matched as the
    replay's DELETEs match them (:func:`doomed_partitions`: by dataset and id, or by id alone), so a row the
    replay would keep stays."""
    anywhere: set[str] = set()  # ids the replay deletes in any dataset
    owned: set[tuple[str, str]] = set()  # (dataset, id) the replay deletes in that dataset only
    for delta in deltas:
        doomed = {d: ids for d, ids in doomed_partitions(delta).items() if ids}
        restricted = restricted_by_dataset(doomed)
        for did, ids in doomed.items():
            if restricted:
                owned.update((str(did), pid) for pid in ids)
            else:
                anywhere.update(ids)
    gone = deleted_datasets(deltas)
    if not (anywhere or owned or gone):
        return snap

    def named(pid: str, did: str) -> bool:
        return pid in anywhere or did in gone or (did, pid) in owned

    table = snap.partitions_table
    if table is not None and table.num_rows:
        table = _without_rows(table, named, anywhere | {pid for _did, pid in owned}, gone)
    return CatalogSnapshot(
        snap.lsn,
        snap.datasets,
        snap.schema_versions,
        snap.storage_targets,
        [p for p in snap.partitions if not named(str(p["id"]), str(p.get("dataset_id")))],
        table,
    )


def replayed_partitions(deltas: Sequence[tuple[Delta, int]]) -> list[tuple[dict[str, Any], int]]:
    """The partition rows that replaying ``(delta, shard)`` in order with :meth:`ContentWriter.apply_delta`
    inserts and leaves in place, each with its shard and ``dataset_id`` filled in: a later delta's DELETE
    (restricted to its datasets or by id alone, as :meth:`ContentWriter._delete_partitions` matches) or dataset
    delete removes an earlier delta's row. What the replay's statements do to rows older than the replay is
    not modelled here (:meth:`ContentWriter.replay` still runs them)."""
    rows: dict[tuple[str, str], list[tuple[dict[str, Any], int]]] = {}
    for delta, shard in deltas:
        if delta.kind != DeltaKind.DELTA:
            continue
        ds_id = delta.dataset_id
        gone = deleted_datasets([delta])
        if gone:
            rows = {key: v for key, v in rows.items() if key[0] not in gone}
        upserts = [u for change in delta.shards.values() for u in change.upserts]
        if not (upserts or any(change.deletes for change in delta.shards.values())):
            continue
        doomed = {d: ids for d, ids in doomed_partitions(delta).items() if ids}
        if restricted_by_dataset(doomed):
            for did, ids in doomed.items():
                for pid in ids:
                    rows.pop((str(did), pid), None)
        else:
            every = {pid for ids in doomed.values() for pid in ids}
            rows = {key: v for key, v in rows.items() if key[1] not in every}
        mine: dict[tuple[str, str], list[tuple[dict[str, Any], int]]] = {}
        for u in upserts:
            did = str(u.get("dataset_id") or ds_id)
            mine.setdefault((did, str(u["id"])), []).append(({**u, "dataset_id": did}, shard))
        rows.update(mine)
    return [row for kept in rows.values() for row in kept]


def _without_rows(
    table: pa.Table, named: Callable[[str, str], bool], ids: set[str], datasets: set[str]
) -> pa.Table:
    """``table`` without the rows ``named`` picks among those whose id is in ``ids`` or dataset in ``datasets``.
    A hash lookup per row finds the few candidates; the rest of the table is kept as zero-copy slices around the dropped rows (a
    filter mask over all columns copied the 1M-row table: 0.8–2.3 s under the writer lock, docs/performance.md)."""
    mask = pc.fill_null(pc.is_in(table["id"], value_set=pa.array(sorted(ids), pa.string())), False)
    if datasets:
        in_gone = pc.is_in(table["dataset_id"], value_set=pa.array(sorted(datasets), pa.string()))
        mask = pc.or_(mask, pc.fill_null(in_gone, False))
    candidates = pc.indices_nonzero(mask)
    if not len(candidates):
        return table
    rows = candidates.to_pylist()
    pids = table["id"].take(candidates).to_pylist()
    dids = table["dataset_id"].take(candidates).to_pylist()
    dropped = [
        row
        for row, pid, did in zip(rows, pids, dids, strict=True)
        if named(str(pid), "" if did is None else str(did))
    ]
    if not dropped:
        return table
    pieces, start = [], 0
    for row in dropped:
        if row > start:
            pieces.append(table.slice(start, row - start))
        start = row + 1
    if start < table.num_rows:
        pieces.append(table.slice(start))
    return pa.concat_tables(pieces) if pieces else table.slice(0, 0)


class ContentWriter:
    """Writes deltas' and snapshots' rows; keeps the storage targets (a partition's location needs its own)."""

    def __init__(self, storage_root: str) -> None:
        self.storage_root = storage_root
        self.targets: dict[str, dict[str, Any]] = {}

    def load_targets(self, cur: duckdb.DuckDBPyConnection) -> None:
        for tid, name, kind, config in cur.execute(
            f"SELECT id, name, kind, config FROM {WD}.storage_targets"
        ).fetchall():
            self.targets[tid] = {"id": tid, "name": name, "kind": kind, "config": as_dict(config)}

    # ------------------------------------------------------------------ deltas
    def apply_delta(
        self,
        cur: duckdb.DuckDBPyConnection,
        delta: Delta,
        shard: int,
        with_insert: bool = True,
        with_delete: bool = True,
    ) -> set[str]:
        """Every row of one delta (whatever it carries); :meth:`replay` leaves out the partition INSERT (and,
        over emptied tables, the DELETE)."""
        touched: set[str] = set()
        ds_id = delta.dataset_id
        for target in delta.storage_targets:
            touched |= self.upsert_target(cur, target)
        if delta.dataset is not None:
            did = str(delta.dataset.get("id") or ds_id)
            touched.add(did)
            if delta.dataset.get("deleted"):
                self._delete_dataset(cur, did)
            else:
                self._upsert_datasets(cur, [delta.dataset], shard)
        if delta.schema_versions:
            self._upsert_schema_versions(cur, delta.schema_versions, shard, ds_id)
            touched |= {str(sv.get("dataset_id") or ds_id) for sv in delta.schema_versions}
        upserts: list[dict[str, Any]] = []
        deletes: list[str] = []
        for change in delta.shards.values():
            upserts.extend(change.upserts)
            deletes.extend(change.deletes)
        if upserts or deletes:
            if with_delete:
                self._delete_partitions(cur, doomed_partitions(delta))
            if with_insert:
                self.insert_partitions(cur, upserts, shard, ds_id)
            touched |= {str(u.get("dataset_id") or ds_id) for u in upserts}
            if ds_id:
                touched.add(ds_id)
        if delta.dataset is not None or delta.schema_versions:
            for did in touched:
                self._recompute_columns(cur, did)
        touched.discard("None")
        return touched

    def replay(
        self, cur: duckdb.DuckDBPyConnection, deltas: Sequence[tuple[Delta, int]], wiped: bool
    ) -> set[str]:
        """``(delta, shard)`` applied in order as :meth:`apply_delta` does, with every partition row they leave
        in place (:func:`replayed_partitions`) written at the end by one INSERT per shard: no statement deletes
        or updates a row inserted by the replay itself, which would make DuckDB log the transaction's appended
        rows into its WAL (a build inserted 1M of them just before; docs/performance.md). Each delta's DELETEs
        still run in place for older rows; ``wiped`` (the tables were emptied in this transaction and hold
        only rows the caller left out of what the replay deletes, ``without_replayed``) skips them too."""
        touched: set[str] = set()
        for delta, shard in deltas:
            if delta.kind == DeltaKind.DELTA:
                touched |= self.apply_delta(cur, delta, shard, with_insert=False, with_delete=not wiped)
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for row, shard in replayed_partitions(deltas):
            by_shard.setdefault(shard, []).append(row)
        for shard, rows in by_shard.items():
            self.insert_partitions(cur, rows, shard, None)
        return touched

    def apply_partition_changes(
        self, cur: duckdb.DuckDBPyConnection, deltas: Sequence[tuple[Delta, int]]
    ) -> set[str]:
        """The NET partition changes of ``(delta, shard)`` that carry only partitions (and heartbeats), in
        order: one DELETE, one INSERT per shard. Within one delta upserts win over deletes (as
        :meth:`apply_delta`: it deletes every named id, then inserts the upserts); a later delta overrides
        an earlier one."""
        net: dict[str, tuple[dict[str, Any] | None, int, str | None]] = {}
        touched: set[str] = set()
        for delta, shard in deltas:
            if delta.kind != DeltaKind.DELTA:
                continue
            ds_id = delta.dataset_id
            changes = list(delta.shards.values())
            for change in changes:
                for pid in change.deletes:
                    net[str(pid)] = (None, shard, ds_id)
            for change in changes:
                for u in change.upserts:
                    net[str(u["id"])] = (u, shard, ds_id)
            if any(c.upserts or c.deletes for c in changes):
                names = {str(u.get("dataset_id") or ds_id) for c in changes for u in c.upserts}
                if ds_id:
                    names.add(ds_id)
                names.discard("None")
                touched |= names
        if not net:
            return touched
        doomed: dict[str | None, list[str]] = {}
        for pid, (row, _shard, ds_id) in net.items():
            doomed.setdefault(_owner(row, ds_id), []).append(pid)
        self._delete_partitions(cur, doomed)
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for row, shard, ds_id in net.values():
            if row is not None:
                if not row.get("dataset_id"):
                    row = {**row, "dataset_id": ds_id}
                by_shard.setdefault(shard, []).append(row)
        for shard, rows in by_shard.items():
            self.insert_partitions(cur, rows, shard, None)
        return touched

    # ------------------------------------------------------------------ rows
    def _delete_partitions(
        self, cur: duckdb.DuckDBPyConnection, by_dataset: dict[str | None, list[str]]
    ) -> None:
        """Delete partition rows by id, ids grouped by the dataset that holds them (``None``: unknown).

        With a few known datasets each DELETE is restricted to its dataset: ``dataset_id = ?`` lets DuckDB's
        zone maps skip the other datasets' row groups (1,000 ids at 1M partitions: 6 ms instead of 41 ms for a
        scan of every id). A partition that moved to another dataset keeps its old row until the old
        dataset's delta (which carries its delete) is applied, as that dataset's view should. Unknown owners
        or many datasets: one scan."""
        by_dataset = {d: ids for d, ids in by_dataset.items() if ids}
        if not by_dataset:
            return
        if not restricted_by_dataset(by_dataset):
            every = [pid for ids in by_dataset.values() for pid in ids]
            cur.execute(f"DELETE FROM {WD}.partitions WHERE list_contains(?, id)", [every])
            return
        for did, ids in by_dataset.items():
            cur.execute(
                f"DELETE FROM {WD}.partitions WHERE dataset_id = ? AND list_contains(?, id)", [did, ids]
            )

    def upsert_target(self, cur: duckdb.DuckDBPyConnection, target: dict[str, Any]) -> set[str]:
        tid = str(target["id"])
        row = {
            "id": tid,
            "name": target.get("name"),
            "kind": target.get("kind") or "local",
            "config": as_dict(target.get("config")),
        }
        cur.execute(f"DELETE FROM {WD}.storage_targets WHERE id = ?", [tid])
        if not target.get("deleted"):
            cur.execute(
                f"INSERT INTO {WD}.storage_targets VALUES (?, ?, ?, ?)",
                [tid, row["name"], row["kind"], as_json_text(row["config"])],
            )
        old = self.targets.get(tid)
        self.targets[tid] = row
        if old is not None and (old.get("kind"), old.get("config")) == (row["kind"], row["config"]):
            return set()
        rows = cur.execute(
            f"SELECT id, file_path, dataset_id FROM {WD}.partitions WHERE storage_target_id = ?", [tid]
        ).fetchall()
        if rows:
            cur.executemany(
                f"UPDATE {WD}.partitions SET location = ? WHERE id = ?",
                [[partition_location(row, fp, self.storage_root), pid] for pid, fp, _ in rows],
            )
        return {r[2] for r in rows}

    @staticmethod
    def _delete_dataset(cur: duckdb.DuckDBPyConnection, did: str) -> None:
        for table in ("datasets", "schema_versions", "partitions", "columns"):
            col = "id" if table == "datasets" else "dataset_id"
            cur.execute(f"DELETE FROM {WD}.{table} WHERE {col} = ?", [did])

    @staticmethod
    def _upsert_datasets(cur: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], shard: int) -> None:
        for ds in rows:
            did = str(ds["id"])
            cur.execute(f"DELETE FROM {WD}.datasets WHERE id = ?", [did])
            cur.execute(
                f"INSERT INTO {WD}.datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                dataset_row(ds, shard),
            )

    @staticmethod
    def _upsert_schema_versions(
        cur: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], shard: int, ds_id: str | None
    ) -> None:
        for sv in rows:
            cur.execute(f"DELETE FROM {WD}.schema_versions WHERE id = ?", [str(sv["id"])])
            cur.execute(
                f"INSERT INTO {WD}.schema_versions VALUES (?, ?, ?, ?, ?)",
                [
                    str(sv["id"]),
                    str(sv.get("dataset_id") or ds_id),
                    shard,
                    int(sv.get("version") or 0),
                    as_json_text(as_dict(sv.get("schema"))),
                ],
            )

    def insert_partitions(
        self, cur: duckdb.DuckDBPyConnection, upserts: list[dict[str, Any]], shard: int, ds_id: str | None
    ) -> None:
        if not upserts:
            return
        cols: dict[str, list[Any]] = {c: [] for c in ddl.PARTITION_COLUMNS}
        for u in upserts:
            fp = str(u["file_path"])
            cols["id"].append(str(u["id"]))
            cols["dataset_id"].append(str(u.get("dataset_id") or ds_id))
            cols["shard"].append(shard)
            cols["manifest_id"].append(u.get("manifest_id"))
            cols["manifest_shard"].append(u.get("manifest_shard"))
            cols["storage_target_id"].append(u.get("storage_target_id"))
            cols["file_path"].append(fp)
            cols["location"].append(
                partition_location(self.targets.get(str(u.get("storage_target_id"))), fp, self.storage_root)
            )
            cols["file_format"].append(u.get("file_format") or "parquet")
            cols["start_time"].append(naive_utc(u.get("start_time")) or FAR_PAST)
            cols["end_time"].append(naive_utc(u.get("end_time")) or FAR_FUTURE)
            cols["row_count"].append(u.get("row_count"))
            cols["file_size_bytes"].append(u.get("file_size_bytes"))
            cols["schema_version_id"].append(u.get("schema_version_id"))
            cols["table_name"].append(u.get("table_name") or "records")
            cols["partition_key"].append(as_json_text(u.get("partition_key") or {}))
        typed = {"shard", "start_time", "end_time", "row_count", "file_size_bytes"}
        table = pa.table(
            {
                **{k: pa.array(v, pa.string()) for k, v in cols.items() if k not in typed},
                "shard": pa.array(cols["shard"], pa.int32()),
                "start_time": pa.array(cols["start_time"], pa.timestamp("us")),
                "end_time": pa.array(cols["end_time"], pa.timestamp("us")),
                "row_count": pa.array(cols["row_count"], pa.int64()),
                "file_size_bytes": pa.array(cols["file_size_bytes"], pa.int64()),
            }
        )
        cur.register("__wd_upserts", table)
        try:
            names = ", ".join(ddl.PARTITION_COLUMNS)
            cur.execute(f"INSERT INTO {WD}.partitions ({names}) SELECT {names} FROM __wd_upserts")
        finally:
            cur.unregister("__wd_upserts")

    @staticmethod
    def _recompute_columns(cur: duckdb.DuckDBPyConnection, did: str) -> None:
        cur.execute(f"DELETE FROM {WD}.columns WHERE dataset_id = ?", [did])
        row = cur.execute(f"SELECT shard FROM {WD}.datasets WHERE id = ?", [did]).fetchone()
        newest = cur.execute(
            f"SELECT schema FROM {WD}.schema_versions WHERE dataset_id = ? ORDER BY version DESC LIMIT 1",
            [did],
        ).fetchone()
        if row is None or newest is None:
            return
        fields = schema_columns(as_dict(newest[0]))
        if fields:
            cur.executemany(
                f"INSERT INTO {WD}.columns VALUES (?, ?, ?, ?, ?, ?, ?)",
                [[did, row[0], i, n, t, nl, d] for i, (n, t, nl, d) in enumerate(fields)],
            )
