"""ContextStore: one DuckDB instance holding every context shard's partition index.

Layout (reasoning in ``docs/contexts.md``): one DuckDB file; every index row carries ``shard`` (the
deltas-topic partition it came from); ``wd.shard_progress`` / ``wd.src_offsets`` hold, per shard,
the deltas offset, source offset and LSN applied, written in the same DuckDB transaction as the
change. One writer (a lock; the consumer calls :meth:`apply` from one thread); readers take cursors
from a bounded pool on the sandboxed instance and keep their MVCC snapshot while applies commit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from sinks.context import ddl, lifecycle, staleness
from sinks.context.build import ContextBuilder
from sinks.context.datasets import DatasetCache, DatasetView, collision_warnings, dataset_row, partition_index
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.exceptions import StoreNotOpen
from sinks.context.lsnwait import LsnWaits
from sinks.context.naming import (
    quote_ident,
    schema_columns,
)
from sinks.context.pgsource import CatalogSnapshot, as_json_text
from sinks.context.readers import Readers
from sinks.context.rebuilds import RebuildJob, RebuildScheduler
from sinks.context.relation import FileBinder, RelationReader
from sinks.context.values import FAR_FUTURE, FAR_PAST, as_dict, naive_utc
from sinks.settings import SinkSettings
from walduck import metrics
from walduck.config import ContextMode, WalduckSettings
from walduck.deltas import Delta, DeltaKind
from walduck.locations import partition_location
from walduck.records import GLOBAL_KEY
from walduck.timeutil import iso, utcnow

log = logging.getLogger(__name__)
_MAX_DATASET_DELETES = 3
"""Above this many datasets in one apply, one unrestricted DELETE scan beats a restricted DELETE per dataset."""


def _owner(row: dict[str, Any] | None, ds_id: str | None) -> str | None:
    """The dataset holding a partition row: its own ``dataset_id``, else the delta's (``None``: unknown)."""
    owner = (row.get("dataset_id") if row is not None else None) or ds_id
    return None if owner is None else str(owner)


@dataclass(slots=True)
class ShardProgress:
    shard: int
    applied_lsn: int = 0
    deltas_offset: int = -1
    src_offset: int = -1
    newest_commit_ts: str | None = None
    staleness_s: float | None = None
    last_apply_ms: float | None = None
    last_error: str | None = None
    bootstrapped: bool = False
    applied_at: str | None = None


def covered_lsn(delta: Delta) -> int:
    """The LSN through which everything is applied once ``delta`` is.

    Every piece of the initial snapshot carries the slot's consistent point as its LSN, but the
    snapshot is spread over many deltas: only the first delta after it (a heartbeat or a streamed
    change, which the connector emits after ``snapshot_done``) proves that everything committed at
    the consistent point is applied. Until then a snapshot piece covers the LSN just before it.
    """
    return delta.lsn_to - 1 if delta.snapshot else delta.lsn_to


def _stream_key(delta: Delta) -> tuple[int, str]:
    """Idempotence key of a delta: its changes-topic partition and its dataset (or the global stream)."""
    return (delta.src_partition, delta.dataset_id or GLOBAL_KEY)


class ContextStore:
    def __init__(self, settings: SinkSettings, walduck: WalduckSettings) -> None:
        self.settings = settings
        self.walduck = walduck
        self.path: Path = settings.resolved_context_path(walduck)
        self.storage_root = str(walduck.resolved_storage_root())
        self.full_scan = walduck.context_mode == ContextMode.FULL_SCAN
        self._db: duckdb.DuckDBPyConnection | None = None
        self._writer: duckdb.DuckDBPyConnection | None = None
        self._write_lock = threading.RLock()
        self._readers = Readers(
            self._require, settings.reader_pool_size, settings.reader_wait_s, self.forget_missing_files
        )
        self._progress: dict[int, ShardProgress] = {}
        # highest source offset applied per (changes partition, dataset stream): the compactor writes one
        # delta per dataset per window, all naming the window's offset range (see walduck/deltas.py)
        self._src_offsets: dict[tuple[int, str], int] = {}
        self._targets: dict[str, dict[str, Any]] = {}
        self._datasets = DatasetCache(self._cursor)
        self._relations = RelationReader(
            self._cursor, self._datasets, [self.storage_root, *settings.allowed_directories]
        )
        self._views_dirty: set[str] = set()
        self._rebuilds_running = 0
        self._view_owner: dict[str, str] = {}
        self._views_refreshed_at = 0.0
        self._views_refresh_s = 0.0  # duration of the last plain-view refresh
        self._version = 0
        self._opened_at: datetime | None = None
        self._rebuild_info: dict[str, dict[str, Any]] = {}
        # deltas applied while a rebuild reads PostgreSQL, one journal per running rebuild (see _rebuild)
        self._rebuild_journals: list[list[tuple[Delta, int]]] = []
        self._rebuilds = RebuildScheduler(self._rebuild_now)
        self.builder = ContextBuilder(self)
        self.pg_connect: Callable[[], Any] | None = None
        self._lsn = LsnWaits(self.applied_lsn)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        db = lifecycle.connect(self.path, self.settings, self.storage_root)
        self._db = db
        self._writer = db.cursor()
        self._load_state()
        self._readers.fill()
        self._opened_at = utcnow()
        with self._write_lock:
            self._views_dirty = {
                row[0] for row in self._writer.execute(f"SELECT id FROM {WD}.datasets").fetchall()
            }
            # bounded: a big context's views are finished by the consumer's refreshes (build.py)
            self._refresh_views(time.monotonic(), self.settings.view_refresh_budget_s)

    def wal_bytes(self) -> int:
        """Size of DuckDB's write-ahead log: committed changes not yet folded into the database file."""
        return lifecycle.wal_bytes(self.path)

    def checkpoint(self, min_wal_bytes: int = 0) -> bool | None:
        """Fold the WAL into the database file when idle (``lifecycle.checkpoint``)."""
        self._require()
        assert self._writer is not None
        return lifecycle.checkpoint(self.path, self._writer, self._write_lock, min_wal_bytes)

    def close(self) -> None:
        if self._db is None:
            return
        self._readers.close()
        with self._write_lock:
            with contextlib.suppress(Exception):
                self._writer.execute("CHECKPOINT")  # type: ignore[union-attr]
            self._db.close()
            self._db = None
            self._writer = None

    def __enter__(self) -> ContextStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require(self) -> duckdb.DuckDBPyConnection:
        if self._db is None:
            raise StoreNotOpen("context store is not open")
        return self._db

    def is_open(self) -> bool:
        return self._db is not None

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    def _load_state(self) -> None:
        cur = self._writer
        assert cur is not None
        for shard in range(self.walduck.topic_partitions):
            self._progress.setdefault(shard, ShardProgress(shard))
        rows = cur.execute(
            f"SELECT shard, deltas_offset, applied_lsn, commit_ts, bootstrapped, applied_at FROM {WD}.shard_progress"
        ).fetchall()
        for shard, doff, lsn, cts, boot, applied_at in rows:
            p = self._progress.setdefault(shard, ShardProgress(shard))
            p.deltas_offset, p.applied_lsn, p.bootstrapped = doff, int(lsn), bool(boot)
            p.newest_commit_ts = iso(cts) if cts else None
            p.applied_at = iso(applied_at) if applied_at else None
        for src, stream, off in cur.execute(
            f"SELECT src_partition, stream, src_offset FROM {WD}.src_offsets"
        ).fetchall():
            self._src_offsets[(src, stream)] = off
            if src in self._progress:
                self._progress[src].src_offset = max(self._progress[src].src_offset, off)
        for tid, name, kind, config in cur.execute(
            f"SELECT id, name, kind, config FROM {WD}.storage_targets"
        ).fetchall():
            self._targets[tid] = {"id": tid, "name": name, "kind": kind, "config": as_dict(config)}
        for did, scope, reason, result, error, at, ms, lsn, replayed in cur.execute(
            f"SELECT dataset_id, scope, reason, result, error, finished_at, duration_ms, lsn, replayed_deltas"
            f" FROM {WD}.rebuilds"
        ).fetchall():
            self._rebuild_info[did] = {
                "scope": scope,
                "reason": reason,
                "result": result,
                "error": error,
                "at": iso(at) if at else None,
                "durationMs": ms,
                "lsn": lsn,
                "replayedDeltas": replayed,
            }

    # ------------------------------------------------------------------ readers (readers.py)
    def reader(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        return self._readers.reader()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        return self._readers.cursor()

    def pinned_snapshot(self) -> contextlib.AbstractContextManager[None]:
        return self._readers.pinned_snapshot()

    # ------------------------------------------------------------------ apply
    def apply(self, delta: Delta, partition: int, offset: int) -> bool:
        """``apply_batch([(delta, partition, offset)])``: False = duplicate (already applied), dropped."""
        return self.apply_batch([(delta, partition, offset)])[0]

    def apply_batch(self, items: Sequence[tuple[Delta, int, int]]) -> list[bool]:
        """Apply ``(delta, deltas partition, deltas offset)`` items in order (False = duplicate, dropped).

        ONE path: the items are cut into runs, each ONE DuckDB transaction (:meth:`_apply_run`).
        Consecutive deltas that only change partitions (and heartbeats) form one run: their net partition
        changes (one DELETE, one INSERT), one progress row per shard and one source-offset row per stream.
        A delta with dataset, schema-version or storage-target rows (or any delta in full-scan mode) is a
        run of its own, in its place. Per-delta statements, not the commit, are most of an apply's cost, so
        a consumer that fell behind catches up in a few transactions instead of one per delta.
        On an error nothing of the failing run is applied (the caller may retry delta by delta).
        """
        self._require()
        results: list[bool] = []
        run: list[tuple[Delta, int, int]] = []
        with self._write_lock:
            for item in items:
                if self._batchable(item[0]):
                    run.append(item)
                    continue
                results.extend(self._apply_run(run))
                run = []
                results.extend(self._apply_run([item]))
            results.extend(self._apply_run(run))
        return results

    def _batchable(self, delta: Delta) -> bool:
        if delta.kind == DeltaKind.HEARTBEAT:
            return True
        return (
            delta.kind == DeltaKind.DELTA
            and not self.full_scan
            and delta.dataset is None
            and not delta.schema_versions
            and not delta.storage_targets
        )

    def _apply_run(self, run: list[tuple[Delta, int, int]]) -> list[bool]:
        """One transaction: partition-only deltas and heartbeats, or one delta of any other kind."""
        if not run:
            return []
        results: list[bool] = []
        accepted: list[tuple[Delta, int, int]] = []
        last_offset: dict[int, int] = {}  # deltas offset per shard after the run (duplicates included)
        src: dict[tuple[int, str], int] = {}
        row_ts: dict[int, str | None] = {}  # commit_ts of each shard's progress row
        newest: dict[int, str | None] = {}
        for delta, partition, offset in run:
            prog = self._progress.setdefault(partition, ShardProgress(partition))
            prev = last_offset.get(partition, prog.deltas_offset)
            key = _stream_key(delta)
            newest.setdefault(partition, prog.newest_commit_ts)
            if offset <= prev or delta.src_offset_to <= src.get(key, self._src_offsets.get(key, -1)):
                metrics.DELTAS_APPLIED.labels(result="duplicate").inc()
                if offset > prev:
                    last_offset[partition] = offset
                    row_ts[partition] = newest[partition]
                results.append(False)
                continue
            last_offset[partition] = offset
            src[key] = delta.src_offset_to
            row_ts[partition] = newest[partition] if delta.snapshot else delta.commit_ts_max
            if not delta.snapshot:
                newest[partition] = delta.commit_ts_max
            accepted.append((delta, partition, offset))
            results.append(True)
        if not last_offset:
            return results
        started = time.perf_counter()
        alone = accepted[0] if len(run) == 1 and accepted and not self._batchable(accepted[0][0]) else None
        snap: CatalogSnapshot | None = None
        # full-scan mode rebuilds the dataset a delta names straight from PostgreSQL; a global delta
        # (storage targets) names no dataset and is applied as it is: replacing "all datasets named"
        # with an empty read would wipe every dataset of the context
        if alone is not None and self.full_scan and alone[0].kind == DeltaKind.DELTA and alone[0].dataset_id:
            snap = self._full_scan_snapshot(alone[0])
        cur = self._writer
        assert cur is not None
        cur.begin()
        try:
            if alone is not None:
                delta, partition, _ = alone
                if snap is not None:
                    touched = self._replace_from_snapshot(cur, snap, partition, delta.dataset_id)
                elif delta.kind == DeltaKind.DELTA:
                    touched = self._apply_content(cur, delta, partition)
                else:
                    touched = set()
            else:
                touched = self._apply_partition_changes(cur, accepted)
            now = utcnow()
            self._write_progress_rows(
                cur,
                [
                    [
                        shard,
                        last_offset[shard],
                        max(
                            [self._progress[shard].applied_lsn]
                            + [covered_lsn(d) for d, p, _ in accepted if p == shard]
                        ),
                        row_ts.get(shard),
                        self._progress[shard].bootstrapped,
                        now if any(p == shard for _, p, _ in accepted) else self._progress[shard].applied_at,
                    ]
                    for shard in sorted(last_offset)
                ],
            )
            if src:
                # one DELETE + one INSERT for every (changes partition, stream) the run advanced
                keys = [f"{part}/{stream}" for part, stream in src]
                cur.execute(
                    f"DELETE FROM {WD}.src_offsets WHERE list_contains(?, src_partition::VARCHAR || '/' || stream)",
                    [keys],
                )
                cur.execute(
                    f"INSERT INTO {WD}.src_offsets (src_partition, stream, src_offset) VALUES "
                    + ", ".join(["(?, ?, ?)"] * len(src)),
                    [
                        v
                        for key, value in src.items()
                        for v in (*key, max(self._src_offsets.get(key, -1), value))
                    ],
                )
            cur.commit()
        except Exception as exc:
            with contextlib.suppress(Exception):
                cur.rollback()
            for _, partition, _ in accepted:
                self._progress[partition].last_error = f"{type(exc).__name__}: {exc}"[:500]
            raise
        elapsed = time.perf_counter() - started
        # invalidate the dataset cache BEFORE publishing the run's applied LSNs: a reader that waits for one
        # (read-your-writes) must not then plan against a dataset list that predates the apply
        self._mark_touched(touched)
        for delta, partition, offset in accepted:
            self._after_commit(delta, partition, offset, elapsed)
        for shard, offset in last_offset.items():
            self._progress[shard].deltas_offset = max(self._progress[shard].deltas_offset, offset)
        if accepted:
            metrics.DELTA_APPLY_DURATION.observe(elapsed)
        self._lsn.wake()
        return results

    def _apply_partition_changes(
        self, cur: duckdb.DuckDBPyConnection, accepted: list[tuple[Delta, int, int]]
    ) -> set[str]:
        """The net partition changes of partition-only deltas, in delta order: within one delta upserts win
        over deletes (as :meth:`_apply_content`, which deletes every named id, then inserts the upserts); a
        later delta overrides an earlier one."""
        net: dict[str, tuple[dict[str, Any] | None, int, str | None]] = {}
        touched: set[str] = set()
        for delta, partition, _ in accepted:
            if delta.kind != DeltaKind.DELTA:
                continue
            ds_id = delta.dataset_id
            changes = list(delta.shards.values())
            for change in changes:
                for pid in change.deletes:
                    net[str(pid)] = (None, partition, ds_id)
            for change in changes:
                for u in change.upserts:
                    net[str(u["id"])] = (u, partition, ds_id)
            if any(c.upserts or c.deletes for c in changes):
                names = {str(u.get("dataset_id") or ds_id) for c in changes for u in c.upserts}
                if ds_id:
                    names.add(ds_id)
                names.discard("None")
                touched |= names
        if not net:
            return touched
        doomed: dict[str | None, list[str]] = {}
        for pid, (row, _partition, ds_id) in net.items():
            doomed.setdefault(_owner(row, ds_id), []).append(pid)
        self._delete_partitions(cur, doomed)
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for row, partition, ds_id in net.values():
            if row is not None:
                if not row.get("dataset_id"):
                    row = {**row, "dataset_id": ds_id}
                by_shard.setdefault(partition, []).append(row)
        for partition, rows in by_shard.items():
            self._insert_partitions(cur, rows, partition, None)
        return touched

    @staticmethod
    def _write_progress_rows(cur: duckdb.DuckDBPyConnection, rows: list[list[Any]]) -> None:
        """Replace the ``wd.shard_progress`` rows ``[shard, deltas offset, applied LSN, commit ts, bootstrapped,
        applied at]`` of their shards (the one place that writes them; times as instant text or datetimes)."""
        if not rows:
            return
        cur.execute(f"DELETE FROM {WD}.shard_progress WHERE list_contains(?, shard)", [[r[0] for r in rows]])
        cur.execute(
            f"INSERT INTO {WD}.shard_progress VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(rows)),
            [v for r in rows for v in (*r[:3], naive_utc(r[3]), r[4], naive_utc(r[5]))],
        )

    def _full_scan_snapshot(self, delta: Delta) -> CatalogSnapshot:
        snap = self.builder.read([delta.dataset_id] if delta.dataset_id else [])
        metrics.REBUILDS.labels(scope="dataset", result="ok").inc()
        return snap

    def _mark_touched(self, touched: set[str]) -> None:
        if touched:
            self._version += 1
            self._datasets.mark(touched)
            self._views_dirty |= touched

    def _after_commit(self, delta: Delta, partition: int, offset: int, elapsed: float) -> None:
        """One delta of a committed run: journaled for running builds, its shard and stream advanced."""
        if delta.kind == DeltaKind.DELTA:
            for journal in self._rebuild_journals:
                journal.append((delta, partition))
        prog = self._progress[partition]
        prog.deltas_offset = offset
        prog.applied_lsn = max(prog.applied_lsn, covered_lsn(delta))
        prog.src_offset = max(prog.src_offset, delta.src_offset_to)
        key = _stream_key(delta)
        self._src_offsets[key] = max(self._src_offsets.get(key, -1), delta.src_offset_to)
        if not delta.snapshot:
            prog.newest_commit_ts = delta.commit_ts_max
        prog.applied_at = iso(utcnow())
        prog.last_apply_ms = round(elapsed * 1000, 3)
        prog.last_error = None
        metrics.DELTAS_APPLIED.labels(result="applied").inc()
        metrics.SHARD_APPLIED_LSN.labels(shard=str(partition)).set(prog.applied_lsn)
        if delta.snapshot:
            return  # a snapshot piece says nothing about freshness until the snapshot is complete
        lag = staleness.publish(partition, prog.newest_commit_ts)
        if lag is not None and delta.kind == DeltaKind.DELTA:
            metrics.END_TO_END_LATENCY.observe(staleness.of(delta.commit_ts_max) or 0.0)

    def _apply_content(self, cur: duckdb.DuckDBPyConnection, delta: Delta, shard: int) -> set[str]:
        touched: set[str] = set()
        ds_id = delta.dataset_id
        for target in delta.storage_targets:
            touched |= self._upsert_target(cur, target)
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
            doomed: dict[str | None, list[str]] = {_owner(None, ds_id): list(deletes)} if deletes else {}
            for u in upserts:
                doomed.setdefault(_owner(u, ds_id), []).append(str(u["id"]))
            self._delete_partitions(cur, doomed)
            self._insert_partitions(cur, upserts, shard, ds_id)
            touched |= {str(u.get("dataset_id") or ds_id) for u in upserts}
            if ds_id:
                touched.add(ds_id)
        if delta.dataset is not None or delta.schema_versions:
            for did in touched:
                self._recompute_columns(cur, did)
        touched.discard("None")
        return touched

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
        if None in by_dataset or len(by_dataset) > _MAX_DATASET_DELETES:
            every = [pid for ids in by_dataset.values() for pid in ids]
            cur.execute(f"DELETE FROM {WD}.partitions WHERE list_contains(?, id)", [every])
            return
        for did, ids in by_dataset.items():
            cur.execute(
                f"DELETE FROM {WD}.partitions WHERE dataset_id = ? AND list_contains(?, id)", [did, ids]
            )

    def _upsert_target(self, cur: duckdb.DuckDBPyConnection, target: dict[str, Any]) -> set[str]:
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
        old = self._targets.get(tid)
        self._targets[tid] = row
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

    def _delete_dataset(self, cur: duckdb.DuckDBPyConnection, did: str) -> None:
        for table in ("datasets", "schema_versions", "partitions", "columns"):
            col = "id" if table == "datasets" else "dataset_id"
            cur.execute(f"DELETE FROM {WD}.{table} WHERE {col} = ?", [did])

    def _upsert_datasets(
        self, cur: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], shard: int
    ) -> None:
        for ds in rows:
            did = str(ds["id"])
            cur.execute(f"DELETE FROM {WD}.datasets WHERE id = ?", [did])
            cur.execute(
                f"INSERT INTO {WD}.datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                dataset_row(ds, shard),
            )

    def _upsert_schema_versions(
        self, cur: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], shard: int, ds_id: str | None
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

    def _insert_partitions(
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
                partition_location(self._targets.get(str(u.get("storage_target_id"))), fp, self.storage_root)
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

    def _recompute_columns(self, cur: duckdb.DuckDBPyConnection, did: str) -> None:
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

    # ------------------------------------------------------------------ builds from PostgreSQL (build.py)
    def _pg(self) -> Any:
        return self.builder.pg()

    def _replace_from_snapshot(
        self, cur: duckdb.DuckDBPyConnection, snap: CatalogSnapshot, shard: int | None, only: str | None
    ) -> set[str]:
        return self.builder.replace_from_snapshot(cur, snap, shard, only)

    def can_read_catalog(self) -> bool:
        """True when builds can reach PostgreSQL (a DSN or a connect function is configured)."""
        return self.pg_connect is not None or bool(self.walduck.pg_dsn)

    def _progress_of(self, shard: int) -> ShardProgress:
        return self._progress.setdefault(shard, ShardProgress(shard))

    def bootstrap(self, ends: dict[int, int], reason: str = "bootstrap") -> Any:
        """Build the shards of ``ends`` (partition -> deltas end offset read before) from PostgreSQL
        (``ContextBuilder.bootstrap``); their deltas offset becomes ``end - 1``, they are bootstrapped."""
        return self.builder.bootstrap(ends, reason)

    def rebuild(self, dataset_id: str | None = None, reason: str = "manual") -> None:
        """Reload one dataset (or everything) straight from PostgreSQL and wait for it; offsets are kept.

        Goes through the scheduler (``sinks/context/rebuilds.py``): one rebuild at a time per scope, a
        request while one runs joins the pending one. Deltas applied while the read runs are replayed over
        the snapshot (steps above), so none is lost; deltas still to come re-apply net final partition
        states (docs/contexts.md §Rebuilds). Raises the rebuild's error (also kept in the admin snapshot).
        """
        self.request_rebuild(dataset_id, reason).wait()

    def request_rebuild(self, dataset_id: str | None = None, reason: str = "manual") -> RebuildJob:
        """Queue a rebuild and return at once (admin invalidate); merged with a pending one of its scope."""
        return self._rebuilds.submit(dataset_id, reason)

    def wait_rebuilds(self, timeout_s: float) -> bool:
        """True once no rebuild runs or waits (tests, benches, shutdown)."""
        return self._rebuilds.wait_idle(timeout_s)

    def rebuilding(self) -> bool:
        """True while a rebuild from PostgreSQL runs (a read now is a cache *miss*: its answer predates it)."""
        return self._rebuilds_running > 0

    def rebuild_history(self) -> dict[str, dict[str, Any]]:
        """The last rebuild result per dataset id (``"*"``: the last full rebuild)."""
        return dict(self._rebuild_info)

    def pending_rebuilds(self) -> list[dict[str, Any]]:
        return self._rebuilds.pending()

    def running_rebuilds(self) -> list[dict[str, Any]]:
        return self._rebuilds.running()

    def _rebuild_now(self, dataset_id: str | None, reason: str) -> None:
        scope = "dataset" if dataset_id else "full"
        started = time.perf_counter()
        self._rebuilds_running += 1
        try:
            self._rebuild(dataset_id, scope, started, reason)
        except Exception as exc:
            elapsed = time.perf_counter() - started
            metrics.REBUILDS.labels(scope=scope, result="error").inc()
            metrics.REBUILD_DURATION.labels(scope=scope).observe(elapsed)
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.error("rebuild of %s (%s) failed: %s", dataset_id or "all datasets", reason, error)
            info = {
                "scope": scope,
                "reason": reason,
                "result": "error",
                "error": error,
                "at": iso(utcnow()),
                "durationMs": round(elapsed * 1000, 2),
                "lsn": None,
                "replayedDeltas": None,
            }
            with contextlib.suppress(Exception):  # a closed store cannot keep it: it is logged
                self._record_rebuild({dataset_id or "*"}, info)
            raise
        finally:
            self._rebuilds_running -= 1

    def _record_rebuild(self, keys: set[str], info: dict[str, Any]) -> None:
        """Keep the last rebuild result per dataset in the context file (read back at open)."""
        with self._write_lock:
            cur = self._writer
            if cur is None:
                raise StoreNotOpen("context store is not open")
            rows = [
                [
                    k,
                    info["scope"],
                    info["reason"],
                    info["result"],
                    info["error"],
                    naive_utc(info["at"]),
                    info["durationMs"],
                    info["lsn"],
                    info["replayedDeltas"],
                ]
                for k in sorted(keys)
            ]
            cur.begin()
            try:
                cur.execute(f"DELETE FROM {WD}.rebuilds WHERE list_contains(?, dataset_id)", [sorted(keys)])
                cur.executemany(f"INSERT INTO {WD}.rebuilds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                cur.commit()
            except Exception:
                with contextlib.suppress(Exception):
                    cur.rollback()
                raise
            for k in keys:
                self._rebuild_info[k] = info

    def _rebuild(self, dataset_id: str | None, scope: str, started: float, reason: str) -> None:
        self.builder.rebuild(dataset_id, scope, started, reason)

    def mark_bootstrapped(self, shard: int) -> None:
        with self._write_lock:
            prog = self._progress.setdefault(shard, ShardProgress(shard))
            if prog.bootstrapped:
                return
            prog.bootstrapped = True
            assert self._writer is not None
            self._writer.execute(
                f"UPDATE {WD}.shard_progress SET bootstrapped = true WHERE shard = ?", [shard]
            )

    def set_error(self, shard: int, error: str) -> None:
        self._progress.setdefault(shard, ShardProgress(shard)).last_error = error[:500]

    # ------------------------------------------------------------------ views
    def refresh_views(self, force: bool = False) -> None:
        """(Re)create the plain DuckDB views ``timestore.<view>`` of datasets changed since the last refresh.

        Done after applies (at most every ``view_refresh_interval_s``), not inside them: binding a view
        over N files costs ~20 µs per file. The planner's rewrite is the exact, pruned path. A refresh holds
        the writer, so under a steady write load the interval also stretches to keep refreshes within
        ``view_refresh_max_share`` of the writer's time (the last refresh's duration / that share).
        """
        if self._db is None:
            return
        now = time.monotonic()
        interval = self.settings.view_refresh_interval_s
        if self.settings.view_refresh_max_share > 0:
            interval = max(interval, self._views_refresh_s / self.settings.view_refresh_max_share)
        if not force and now - self._views_refreshed_at < interval:
            return
        if not force and not self._views_dirty:
            return
        with self._write_lock:
            if not self._views_dirty and not force:
                return
            started = time.perf_counter()
            try:
                self._refresh_views(now, 0.0 if force else self.settings.view_refresh_budget_s)
            finally:
                self._views_refresh_s = time.perf_counter() - started

    def _refresh_views(self, now: float, budget_s: float = 0.0) -> None:
        """Refresh the dirty views; with ``budget_s`` > 0 stop starting new ones once it is spent (the rest
        stay dirty for the next call: a build that dirtied every dataset is refreshed in bounded chunks)."""
        with self._write_lock:
            started = time.perf_counter()
            dirty, self._views_dirty = self._views_dirty, set()
            self._views_refreshed_at = now
            views = self.datasets()
            wanted: dict[str, DatasetView] = {}
            for dv in sorted(views, key=lambda d: (d.slug != d.view_name, d.created_at or "", d.id)):
                if dv.write_format == "parquet":
                    wanted.setdefault(dv.view_name, dv)
            cur = self._writer
            assert cur is not None
            for name in list(self._view_owner):
                if name not in wanted:
                    with contextlib.suppress(duckdb.Error):
                        cur.execute(f"DROP VIEW IF EXISTS timestore.{quote_ident(name)}")
                    del self._view_owner[name]
            for name, dv in wanted.items():
                # only views whose dataset changed (or whose owner changed): re-binding a view costs ~20 µs
                # per file, so refreshing every dataset's view on every change does not scale
                if self._view_owner.get(name) == dv.id and dv.id not in dirty:
                    continue
                if budget_s > 0 and time.perf_counter() - started > budget_s:
                    self._views_dirty.add(dv.id)
                    continue
                sql_text, _ = self.relation_sql(dv.id, count_skips=False)
                try:
                    cur.execute(f"CREATE OR REPLACE VIEW timestore.{quote_ident(name)} AS {sql_text}")
                    self._view_owner[name] = dv.id
                except duckdb.Error as exc:
                    log.warning("view timestore.%s not refreshed: %s", name, exc)

    def views_pending(self) -> int:
        """Datasets whose plain view waits for a refresh (after a build: refreshed in chunks)."""
        return len(self._views_dirty)

    # ------------------------------------------------------------------ progress
    def progress(self) -> dict[int, ShardProgress]:
        now = utcnow()
        out: dict[int, ShardProgress] = {}
        for shard, p in sorted(self._progress.items()):
            out[shard] = ShardProgress(
                shard=shard,
                applied_lsn=p.applied_lsn,
                deltas_offset=p.deltas_offset,
                src_offset=p.src_offset,
                newest_commit_ts=p.newest_commit_ts,
                staleness_s=staleness.publish(shard, p.newest_commit_ts, now),
                last_apply_ms=p.last_apply_ms,
                last_error=p.last_error,
                bootstrapped=p.bootstrapped,
                applied_at=p.applied_at,
            )
        return out

    def applied_lsn(self) -> int:
        if not self._progress:
            return 0
        return min(p.applied_lsn for p in self._progress.values())

    async def wait_for_lsn(self, lsn: int, timeout_s: float) -> bool:
        """True once every shard applied ``lsn``, False after ``timeout_s`` (woken by the writer)."""
        return await self._lsn.wait(lsn, timeout_s)

    # ------------------------------------------------------------------ catalog views
    def version(self) -> int:
        """Bumped by every apply/rebuild that changed a dataset (cache key for callers)."""
        return self._version

    def datasets(self) -> list[DatasetView]:
        """Every dataset the context holds (copies: callers may change them), newest update first."""
        return self._datasets.datasets()

    def dataset(self, dataset_id: str) -> DatasetView:
        return self._datasets.dataset(dataset_id)

    def resolve_relation(self, name: str) -> list[DatasetView]:
        """Datasets a ``timestore.<name>`` reference may mean: exact slug matches first, then view-name matches."""
        return self._datasets.resolve(name)

    def collision_warnings(self, views: list[DatasetView] | None = None) -> list[str]:
        return collision_warnings(views if views is not None else self.datasets())

    def partition_index(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        """Visible partitions held (for verify and ``?detail=partitions``)."""
        return partition_index(self._cursor, dataset_id)

    # ------------------------------------------------------------------ relation SQL (relation.py)
    def relation_sql(
        self,
        dataset_id: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        count_skips: bool = True,
        bind: FileBinder | None = None,
    ) -> tuple[str, list[str]]:
        """SQL of a subquery over the dataset's visible partitions overlapping [start, end], and warnings."""
        return self._relations.relation_sql(dataset_id, start, end, count_skips=count_skips, bind=bind)

    # ------------------------------------------------------------------ execution guard (guard.py)
    def statement_tree(self, sql: str) -> dict[str, Any]:
        """DuckDB's own parse of ``sql`` (``json_serialize_sql``): what the execution guard walks."""
        cur = self._cursor()
        try:
            row = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
        finally:
            cur.close()
        return orjson.loads(row[0]) if row else {"error": True}

    def files_outside(self, dataset_id: str, locations: list[str]) -> list[str]:
        """Those of ``locations`` the partition index does not list for ``dataset_id`` now."""
        return self._relations.files_outside(dataset_id, locations)

    def forget_missing_files(self, error: str) -> None:
        """DuckDB could not open a file: forget the cached listing of its directory (``relation.py``)."""
        self._relations.forget_missing_files(error)
