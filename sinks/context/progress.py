"""Shard progress: per context shard (deltas-topic partition) the deltas offset, applied LSN, newest commit
time and bootstrap flag, and per source stream the highest source offset applied.

Held in memory (:class:`ProgressBook`) and in ``wd.shard_progress`` / ``wd.src_offsets``, which are written
in the same DuckDB transaction as the change they account for. This module holds the only SQL that writes
those rows (:meth:`ProgressBook.write`, :meth:`ProgressBook.write_src_offsets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from sinks.context import staleness
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.values import naive_utc
from walduck.deltas import Delta
from walduck.records import GLOBAL_KEY
from walduck.timeutil import iso, utcnow

StreamKey = tuple[int, str]


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


@dataclass(slots=True)
class ProgressRow:
    """One ``wd.shard_progress`` row (times: walduck's instant text or naive UTC datetimes)."""

    shard: int
    deltas_offset: int
    applied_lsn: int
    commit_ts: str | datetime | None
    bootstrapped: bool
    applied_at: str | datetime | None


def covered_lsn(delta: Delta) -> int:
    """The LSN through which everything is applied once ``delta`` is.

    Every piece of the initial snapshot carries the slot's consistent point as its LSN, but the
    snapshot is spread over many deltas: only the first delta after it (a heartbeat or a streamed
    change, which the connector emits after ``snapshot_done``) proves that everything committed at
    the consistent point is applied. Until then a snapshot piece covers the LSN just before it.
    """
    return delta.lsn_to - 1 if delta.snapshot else delta.lsn_to


def stream_key(delta: Delta) -> StreamKey:
    """Idempotence key of a delta: its changes-topic partition and its dataset (or the global stream)."""
    return (delta.src_partition, delta.dataset_id or GLOBAL_KEY)


class ProgressBook:
    """Every shard's :class:`ShardProgress` and every stream's source offset (mutated under the writer lock)."""

    def __init__(self) -> None:
        self.shards: dict[int, ShardProgress] = {}
        # highest source offset applied per (changes partition, dataset stream): the compactor writes one
        # delta per dataset per window, all naming the window's offset range (see walduck/deltas.py)
        self.src_offsets: dict[StreamKey, int] = {}

    def of(self, shard: int) -> ShardProgress:
        return self.shards.setdefault(shard, ShardProgress(shard))

    def src_offset(self, key: StreamKey) -> int:
        return self.src_offsets.get(key, -1)

    def load(self, cur: duckdb.DuckDBPyConnection, shards: int) -> None:
        """Read the rows back at open; shards ``0 .. shards-1`` exist even before they applied anything."""
        for shard in range(shards):
            self.of(shard)
        rows = cur.execute(
            f"SELECT shard, deltas_offset, applied_lsn, commit_ts, bootstrapped, applied_at FROM {WD}.shard_progress"
        ).fetchall()
        for shard, doff, lsn, cts, boot, applied_at in rows:
            p = self.of(shard)
            p.deltas_offset, p.applied_lsn, p.bootstrapped = doff, int(lsn), bool(boot)
            p.newest_commit_ts = iso(cts) if cts else None
            p.applied_at = iso(applied_at) if applied_at else None
        for src, stream, off in cur.execute(
            f"SELECT src_partition, stream, src_offset FROM {WD}.src_offsets"
        ).fetchall():
            self.src_offsets[(src, stream)] = off
            if src in self.shards:
                self.shards[src].src_offset = max(self.shards[src].src_offset, off)

    # ------------------------------------------------------------------ the rows (inside the caller's transaction)
    @staticmethod
    def write(cur: duckdb.DuckDBPyConnection, rows: list[ProgressRow]) -> None:
        """Replace the progress rows of the shards of ``rows`` (one DELETE, one INSERT)."""
        if not rows:
            return
        shards = [r.shard for r in rows]
        cur.execute(f"DELETE FROM {WD}.shard_progress WHERE list_contains(?, shard)", [shards])
        cur.execute(
            f"INSERT INTO {WD}.shard_progress VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(rows)),
            [
                v
                for r in rows
                for v in (
                    r.shard,
                    r.deltas_offset,
                    r.applied_lsn,
                    naive_utc(r.commit_ts),
                    r.bootstrapped,
                    naive_utc(r.applied_at),
                )
            ],
        )

    def write_src_offsets(self, cur: duckdb.DuckDBPyConnection, advanced: dict[StreamKey, int]) -> None:
        """Replace the source-offset rows of the streams of ``advanced`` (never lowering an offset)."""
        if not advanced:
            return
        keys = [f"{part}/{stream}" for part, stream in advanced]
        cur.execute(
            f"DELETE FROM {WD}.src_offsets WHERE list_contains(?, src_partition::VARCHAR || '/' || stream)",
            [keys],
        )
        cur.execute(
            f"INSERT INTO {WD}.src_offsets (src_partition, stream, src_offset) VALUES "
            + ", ".join(["(?, ?, ?)"] * len(advanced)),
            [v for key, value in advanced.items() for v in (*key, max(self.src_offset(key), value))],
        )

    def mark_bootstrapped(self, cur: duckdb.DuckDBPyConnection, shard: int) -> None:
        prog = self.of(shard)
        if prog.bootstrapped:
            return
        prog.bootstrapped = True
        cur.execute(f"UPDATE {WD}.shard_progress SET bootstrapped = true WHERE shard = ?", [shard])

    # ------------------------------------------------------------------ in memory, after a commit
    def applied(self, delta: Delta, shard: int, offset: int, elapsed_s: float) -> ShardProgress:
        """``delta`` at ``offset`` of ``shard`` committed: advance the shard and the delta's stream."""
        prog = self.shards[shard]
        prog.deltas_offset = offset
        prog.applied_lsn = max(prog.applied_lsn, covered_lsn(delta))
        prog.src_offset = max(prog.src_offset, delta.src_offset_to)
        key = stream_key(delta)
        self.src_offsets[key] = max(self.src_offset(key), delta.src_offset_to)
        if not delta.snapshot:
            prog.newest_commit_ts = delta.commit_ts_max
        prog.applied_at = iso(utcnow())
        prog.last_apply_ms = round(elapsed_s * 1000, 3)
        prog.last_error = None
        return prog

    def set_error(self, shard: int, error: str) -> None:
        self.of(shard).last_error = error[:500]

    # ------------------------------------------------------------------ reads
    def view(self) -> dict[int, ShardProgress]:
        """Copies of every shard's progress with its staleness now (also published on its gauge)."""
        now = utcnow()
        out: dict[int, ShardProgress] = {}
        for shard, p in sorted(self.shards.items()):
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
        """The LSN every shard has applied (0 before any shard exists)."""
        if not self.shards:
            return 0
        return min(p.applied_lsn for p in self.shards.values())


def error_text(exc: BaseException) -> str:
    """An apply's error as the shard's ``last_error`` keeps it."""
    return f"{type(exc).__name__}: {exc}"[:500]
