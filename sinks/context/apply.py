"""Applying deltas: ONE path. ``ContextStore.apply(x)`` is ``apply_batch([x])``.

``apply_batch`` cuts its items into *runs*: consecutive deltas that only change partitions (and heartbeats)
form one run; a delta with dataset, schema-version or storage-target rows (or any delta in full-scan mode)
is a run of its own, in its place. Each run is ONE DuckDB transaction (:meth:`Applier._run`):

1. Duplicates are dropped: a delta at a deltas offset its shard already passed, or whose source offset its
   stream already applied (a re-produced delta at a NEW offset still advances the shard's deltas offset).
2. The content: the run's net partition changes (one DELETE, one INSERT per shard), or the one delta's rows
   (``content.ContentWriter.apply_delta``), or in full-scan mode its dataset replaced by a PostgreSQL read
   (``build.ContextBuilder``; read before the transaction opens).
3. One progress row per shard and one source-offset row per stream (``progress.ProgressBook``), commit.
4. After the commit: the touched datasets are marked dirty BEFORE the new applied LSN is published (a reader
   that waits for the LSN must not plan against a dataset list that predates the apply), each delta is
   journaled for a running rebuild, the progress advances, the LSN waiters are woken.

On an error nothing of the run is applied (the consumer then retries delta by delta). Per-delta statements,
not the commit, are most of an apply's cost, so a consumer that fell behind catches up in a few transactions.
Plain views are refreshed by the consumer between batches (``views.ViewRefresher``), never inside an apply.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sinks.context import staleness
from sinks.context.pgsource import CatalogSnapshot
from sinks.context.progress import ProgressRow, covered_lsn, error_text, stream_key
from walduck import metrics
from walduck.deltas import Delta, DeltaKind
from walduck.timeutil import utcnow

if TYPE_CHECKING:
    from sinks.context.store import ContextStore

Item = tuple[Delta, int, int]
"""(delta, deltas partition = context shard, deltas offset)"""


class Applier:
    def __init__(self, store: ContextStore) -> None:
        self.store = store

    def apply_batch(self, items: Sequence[Item]) -> list[bool]:
        """Apply ``items`` in order (False = duplicate, dropped); see the module docstring."""
        st = self.store
        st._require()
        results: list[bool] = []
        run: list[Item] = []
        with st._write_lock:
            for item in items:
                if self._batchable(item[0]):
                    run.append(item)
                    continue
                results.extend(self._run(run))
                run = []
                results.extend(self._run([item]))
            results.extend(self._run(run))
        return results

    def _batchable(self, delta: Delta) -> bool:
        if delta.kind == DeltaKind.HEARTBEAT:
            return True
        return (
            delta.kind == DeltaKind.DELTA
            and not self.store.full_scan
            and delta.dataset is None
            and not delta.schema_versions
            and not delta.storage_targets
        )

    def _run(self, run: list[Item]) -> list[bool]:
        """One transaction: partition-only deltas and heartbeats, or one delta of any other kind."""
        if not run:
            return []
        st = self.store
        book = st._progress
        results: list[bool] = []
        accepted: list[Item] = []
        last_offset: dict[int, int] = {}  # deltas offset per shard after the run (duplicates included)
        src: dict[tuple[int, str], int] = {}
        row_ts: dict[int, str | None] = {}  # commit_ts of each shard's progress row
        newest: dict[int, str | None] = {}
        for delta, partition, offset in run:  # step 1
            prog = book.of(partition)
            prev = last_offset.get(partition, prog.deltas_offset)
            key = stream_key(delta)
            newest.setdefault(partition, prog.newest_commit_ts)
            if offset <= prev or delta.src_offset_to <= src.get(key, book.src_offset(key)):
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
        snap = self._full_scan_read(alone[0]) if alone is not None else None
        cur = st._writer
        assert cur is not None
        cur.begin()
        try:
            if alone is not None:  # step 2
                delta, partition, _ = alone
                if snap is not None:
                    touched = st.builder.replace_from_snapshot(cur, snap, partition, delta.dataset_id)
                elif delta.kind == DeltaKind.DELTA:
                    touched = st.content.apply_delta(cur, delta, partition)
                else:
                    touched = set()
            else:
                touched = st.content.apply_partition_changes(cur, [(d, p) for d, p, _ in accepted])
            now = utcnow()  # step 3
            book.write(
                cur,
                [
                    ProgressRow(
                        shard,
                        last_offset[shard],
                        max(
                            [book.of(shard).applied_lsn]
                            + [covered_lsn(d) for d, p, _ in accepted if p == shard]
                        ),
                        row_ts.get(shard),
                        book.of(shard).bootstrapped,
                        now if any(p == shard for _, p, _ in accepted) else book.of(shard).applied_at,
                    )
                    for shard in sorted(last_offset)
                ],
            )
            book.write_src_offsets(cur, src)
            cur.commit()
        except Exception as exc:
            with contextlib.suppress(Exception):
                cur.rollback()
            for _, partition, _ in accepted:
                book.of(partition).last_error = error_text(exc)
            raise
        elapsed = time.perf_counter() - started
        st._mark_changed(touched)  # step 4: before any LSN of the run is published
        st.changes_applied += sum(
            len(c.upserts) + len(c.deletes) for d, _, _ in accepted for c in d.shards.values()
        )
        for delta, partition, offset in accepted:
            self._after_commit(delta, partition, offset, elapsed)
        for shard, offset in last_offset.items():
            book.of(shard).deltas_offset = max(book.of(shard).deltas_offset, offset)
        # every committed transaction (duplicates that only advance a shard's offset too)
        metrics.DELTA_APPLY_DURATION.observe(elapsed)
        st._lsn.wake()
        return results

    def _full_scan_read(self, delta: Delta) -> CatalogSnapshot | None:
        """Full-scan mode rebuilds the dataset a delta names straight from PostgreSQL; a global delta (storage
        targets) names no dataset and is applied as it is: replacing "all datasets named" with an empty read
        would wipe every dataset of the context."""
        if not (self.store.full_scan and delta.kind == DeltaKind.DELTA and delta.dataset_id is not None):
            return None
        snap = self.store.builder.read([delta.dataset_id])
        metrics.REBUILDS.labels(scope="dataset", result="ok").inc()
        return snap

    def _after_commit(self, delta: Delta, partition: int, offset: int, elapsed: float) -> None:
        st = self.store
        if delta.kind == DeltaKind.DELTA:
            for journal in st._rebuild_journals:
                journal.append((delta, partition))
        prog = st._progress.applied(delta, partition, offset, elapsed)
        metrics.DELTAS_APPLIED.labels(result="applied").inc()
        metrics.SHARD_APPLIED_LSN.labels(shard=str(partition)).set(prog.applied_lsn)
        if delta.snapshot:
            return  # a snapshot piece says nothing about freshness until the snapshot is complete
        lag = staleness.publish(partition, prog.newest_commit_ts)
        if lag is not None and delta.kind == DeltaKind.DELTA:
            metrics.END_TO_END_LATENCY.observe(staleness.of(delta.commit_ts_max) or 0.0)
