"""ContextStore: one DuckDB instance holding every context shard's partition index — the façade.

Layout (reasoning in ``docs/contexts.md``): one DuckDB file; every index row carries ``shard`` (the
deltas-topic partition it came from); ``wd.shard_progress`` / ``wd.src_offsets`` hold, per shard,
the deltas offset, source offset and LSN applied, written in the same DuckDB transaction as the
change. One writer (a lock; the consumer calls :meth:`apply_batch` from one thread); readers take cursors
from a bounded pool on the sandboxed instance and keep their MVCC snapshot while applies commit.

The concepts live in their own modules (``docs/design.md`` §9); this class holds the shared state (the
instance, the writer cursor and its lock) and wires them:

=====================  =======================================================================
``lifecycle``          open (limits, sandbox), idle checkpoint
``readers``            reader pool, pinned snapshots
``apply``              deltas → one DuckDB transaction per run (``apply(x)`` is ``apply_batch([x])``)
``content``            a delta's rows into the index
``progress``           shard progress and source offsets (the only SQL writing their rows)
``lsnwait``            readers waiting for an LSN
``datasets``           the dataset cache
``relation``           a dataset's relation SQL, missing and outside files
``views``              plain ``timestore.<view>`` views
``build``/``rebuilds`` bootstrap, rebuild and full-scan reads from PostgreSQL; scheduling, history
``context_snapshot``   publish the context for new replicas; seed an empty context from it
=====================  =======================================================================

The admin snapshot (JSON for ``/admin/sql/runtime-cache``) is the query service's:
``sinks/service/admin_snapshot.py``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from sinks.context import context_snapshot, lifecycle
from sinks.context.apply import Applier
from sinks.context.build import ContextBuilder
from sinks.context.content import ContentWriter
from sinks.context.datasets import DatasetCache, DatasetView, collision_warnings, partition_index
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.exceptions import (
    ContextError,
    ReaderPoolExhausted,
    SnapshotUnusable,
    StoreNotOpen,
    UnknownDataset,
)
from sinks.context.lsnwait import LsnWaits
from sinks.context.progress import ProgressBook, ShardProgress
from sinks.context.readers import Readers
from sinks.context.rebuilds import RebuildJob, Rebuilds
from sinks.context.relation import RelationReader
from sinks.context.views import ViewRefresher
from sinks.settings import SinkSettings
from walduck import metrics
from walduck.config import ContextMode, WalduckSettings
from walduck.deltas import Delta
from walduck.timeutil import utcnow

log = logging.getLogger(__name__)

__all__ = [
    "ContextError",
    "ContextStore",
    "DatasetView",
    "ReaderPoolExhausted",
    "ShardProgress",
    "StoreNotOpen",
    "UnknownDataset",
]


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
        self._version = 0
        # index rows changed by deltas since open (upserts + deletes; context snapshots publish by it)
        self.changes_applied = 0
        self._opened_at: datetime | None = None
        self._progress = ProgressBook()
        self._lsn = LsnWaits(self._progress.applied_lsn)
        self._readers = Readers(
            self._require, settings.reader_pool_size, settings.reader_wait_s, self.forget_missing_files
        )
        self._datasets = DatasetCache(self._readers.cursor)
        self._relations = RelationReader(
            self._readers.cursor, self._datasets, [self.storage_root, *settings.allowed_directories]
        )
        # SQL of a subquery over a dataset's visible partitions overlapping [start, end], and warnings
        self.relation_sql = self._relations.relation_sql
        self._views = ViewRefresher(self)
        self.content = ContentWriter(self.storage_root)
        self._applier = Applier(self)
        # deltas applied while a build reads PostgreSQL, one journal per running build (build.py)
        self._rebuild_journals: list[list[tuple[Delta, int]]] = []
        self.rebuilds = Rebuilds(self)
        self.builder = ContextBuilder(self)
        self.pg_connect: Callable[[], Any] | None = None

    # ------------------------------------------------------------------ lifecycle (lifecycle.py)
    def open(self) -> None:
        db = lifecycle.connect(self.path, self.settings, self.storage_root)
        self._db = db
        self._writer = db.cursor()
        self._seed_from_snapshot()
        self._progress.load(self._writer, self.walduck.topic_partitions)
        self.content.load_targets(self._writer)
        self.rebuilds.load(self._writer)
        self._readers.fill()
        self._opened_at = utcnow()
        with self._write_lock:
            self._views.dirty = {
                row[0] for row in self._writer.execute(f"SELECT id FROM {WD}.datasets").fetchall()
            }
            # bounded: a big context's views are finished by the consumer's refreshes (build.py)
            self._views.refresh_now(time.monotonic(), self.settings.view_refresh_budget_s)

    # ------------------------------------------------------------------ context snapshots (context_snapshot.py)
    def snapshot_fit(self) -> context_snapshot.Fit:
        return context_snapshot.Fit(
            self.walduck.deltas_topic,
            self.walduck.topic_partitions,
            self.storage_root,
            self.walduck.catalog_schema,
        )

    def _seed_from_snapshot(self) -> None:
        """An empty context (no shard bootstrapped) is filled from the newest published snapshot, if any fits."""
        directory = self.settings.context_snapshot_dir
        if directory is None or self.full_scan:
            return
        context_snapshot.require_outside(directory, [self.storage_root, *self.settings.allowed_directories])
        assert self._writer is not None
        if self._writer.execute(f"SELECT count(*) FROM {WD}.shard_progress WHERE bootstrapped").fetchone()[0]:  # type: ignore[index]
            return
        started = time.perf_counter()
        try:
            doc = context_snapshot.restore(self._writer, directory, self.snapshot_fit())
        except SnapshotUnusable as exc:
            metrics.CONTEXT_SNAPSHOT_RESTORES.labels(result=exc.reason).inc()
            log.warning("context snapshot not used, building from PostgreSQL: %s", exc)
            return
        except (OSError, duckdb.Error, ValueError, KeyError) as exc:
            metrics.CONTEXT_SNAPSHOT_RESTORES.labels(result="error").inc()
            log.warning(
                "context snapshot not used, building from PostgreSQL: %s: %s", type(exc).__name__, exc
            )
            return
        if doc is None:
            metrics.CONTEXT_SNAPSHOT_RESTORES.labels(result="none").inc()
            log.info("context snapshot: none published in %s yet; building from PostgreSQL", directory)
            return
        metrics.CONTEXT_SNAPSHOT_RESTORES.labels(result="ok").inc()
        log.info(
            "context seeded from snapshot %s (published %s) in %.1f ms; following the deltas from %s",
            doc["name"],
            doc["created_at"],
            (time.perf_counter() - started) * 1000,
            {int(k): v["deltas_offset"] + 1 for k, v in doc["shards"].items()},
        )

    def snapshot_publisher(self) -> context_snapshot.Publisher | None:
        """The thread that publishes this context (None: no snapshot directory, or publishing off)."""
        directory = self.settings.context_snapshot_dir
        if directory is None or self.full_scan or self.settings.context_snapshot_interval_s <= 0:
            return None
        # (the directory was checked by open(): require_outside)

        def state() -> object | None:
            progress = self._progress.view()
            if not progress or not all(p.bootstrapped for p in progress.values()):
                return None
            return (self._version, tuple(sorted((s, p.deltas_offset) for s, p in progress.items())))

        return context_snapshot.Publisher(
            self._require,
            state,
            directory,
            self.snapshot_fit(),
            self.settings.context_snapshot_interval_s,
            self.settings.context_snapshot_keep,
            changes=lambda: self.changes_applied,
            max_tail_changes=self.settings.context_snapshot_max_tail_changes,
        )

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

    # ------------------------------------------------------------------ readers (readers.py)
    def reader(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        return self._readers.reader()

    def pinned_snapshot(self) -> contextlib.AbstractContextManager[None]:
        return self._readers.pinned_snapshot()

    def statement_tree(self, sql: str) -> dict[str, Any]:
        """DuckDB's own parse of ``sql`` (``json_serialize_sql``): what the execution guard walks."""
        cur = self._readers.cursor()
        try:
            row = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
        finally:
            cur.close()
        return orjson.loads(row[0]) if row else {"error": True}

    # ------------------------------------------------------------------ apply (apply.py)
    def apply(self, delta: Delta, partition: int, offset: int) -> bool:
        """``apply_batch([(delta, partition, offset)])``: False = duplicate (already applied), dropped."""
        return self.apply_batch([(delta, partition, offset)])[0]

    def apply_batch(self, items: Sequence[tuple[Delta, int, int]]) -> list[bool]:
        """Apply ``(delta, deltas partition, deltas offset)`` items in order (False = duplicate, dropped);
        a run of partition-only deltas shares one DuckDB transaction (``sinks/context/apply.py``)."""
        return self._applier.apply_batch(items)

    def _mark_changed(self, touched: set[str], always: bool = False) -> None:
        """Datasets changed (under the writer lock): caches dirty, plain views due, version bumped."""
        if touched or always:
            self._version += 1
        if touched:
            self._datasets.mark(touched)
            self._views.mark(touched)

    # ------------------------------------------------------------------ builds from PostgreSQL (build.py, rebuilds.py)
    def can_read_catalog(self) -> bool:
        """True when builds can reach PostgreSQL (a DSN or a connect function is configured)."""
        return self.pg_connect is not None or bool(self.walduck.pg_dsn)

    def bootstrap(self, ends: dict[int, int], reason: str = "bootstrap") -> Any:
        """Build the shards of ``ends`` (partition -> deltas end offset read before) from PostgreSQL
        (``ContextBuilder.bootstrap``); their deltas offset becomes ``end - 1``, they are bootstrapped."""
        return self.builder.bootstrap(ends, reason)

    def rebuild(self, dataset_id: str | None = None, reason: str = "manual") -> None:
        """Reload one dataset (or everything) straight from PostgreSQL and wait for it; offsets are kept.

        Goes through the scheduler (``sinks/context/rebuilds.py``): one rebuild at a time per scope, a
        request while one runs joins the pending one. Deltas applied while the read runs are replayed over
        the snapshot (``build.py``), so none is lost; deltas still to come re-apply net final partition
        states (docs/contexts.md §Rebuilds). Raises the rebuild's error (also kept in the admin snapshot).
        """
        self.request_rebuild(dataset_id, reason).wait()

    def request_rebuild(self, dataset_id: str | None = None, reason: str = "manual") -> RebuildJob:
        """Queue a rebuild and return at once (admin invalidate); merged with a pending one of its scope."""
        return self.rebuilds.scheduler.submit(dataset_id, reason)

    def wait_rebuilds(self, timeout_s: float) -> bool:
        """True once no rebuild runs or waits (tests, benches, shutdown)."""
        return self.rebuilds.scheduler.wait_idle(timeout_s)

    def rebuilding(self) -> bool:
        """True while a rebuild from PostgreSQL runs (a read now is a cache *miss*: its answer predates it)."""
        return self.rebuilds.rebuilding()

    def rebuild_history(self) -> dict[str, dict[str, Any]]:
        """The last rebuild result per dataset id (``"*"``: the last full rebuild)."""
        return dict(self.rebuilds.history)

    def pending_rebuilds(self) -> list[dict[str, Any]]:
        return self.rebuilds.scheduler.pending()

    def running_rebuilds(self) -> list[dict[str, Any]]:
        return self.rebuilds.scheduler.running()

    # ------------------------------------------------------------------ progress (progress.py, lsnwait.py)
    def mark_bootstrapped(self, shard: int) -> None:
        with self._write_lock:
            assert self._writer is not None
            self._progress.mark_bootstrapped(self._writer, shard)

    def set_error(self, shard: int, error: str) -> None:
        self._progress.set_error(shard, error)

    def progress(self) -> dict[int, ShardProgress]:
        return self._progress.view()

    def applied_lsn(self) -> int:
        return self._progress.applied_lsn()

    async def wait_for_lsn(self, lsn: int, timeout_s: float) -> bool:
        """True once every shard applied ``lsn``, False after ``timeout_s`` (woken by the writer)."""
        return await self._lsn.wait(lsn, timeout_s)

    # ------------------------------------------------------------------ views (views.py)
    def refresh_views(self, force: bool = False) -> None:
        """(Re)create the plain DuckDB views ``timestore.<view>`` of datasets changed since the last refresh."""
        self._views.refresh(force)

    def views_pending(self) -> int:
        """Datasets whose plain view waits for a refresh (after a build: refreshed in chunks)."""
        return self._views.pending()

    # ------------------------------------------------------------------ datasets (datasets.py)
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
        return partition_index(self._readers.cursor, dataset_id)

    # ------------------------------------------------------------------ relation SQL (relation.py)
    # (relation_sql is the RelationReader's own method, bound in __init__)
    def files_outside(self, dataset_id: str, locations: list[str]) -> list[str]:
        """Those of ``locations`` the partition index does not list for ``dataset_id`` now."""
        return self._relations.files_outside(dataset_id, locations)

    def forget_missing_files(self, error: str) -> None:
        """DuckDB could not open a file: forget the cached listing of its directory (``relation.py``)."""
        self._relations.forget_missing_files(error)
