"""Rebuilds: scheduling (one rebuild at a time per scope, requests that arrive meanwhile merged; issue 15)
and their history (the last result per dataset, kept in ``wd.rebuilds``; the admin snapshot shows it).

A *scope* is one dataset (its id) or every dataset (``None``). While a scope's rebuild runs, new requests for
it wait as ONE pending job (their reasons merged); the pending job starts when the running one ends, so a
burst of N invalidations of a dataset costs at most two reads of PostgreSQL, not N. A dataset request while
a full rebuild is pending joins that full rebuild (it will read the dataset too). Different scopes run
concurrently (each rebuild reads PostgreSQL without the writer lock and replaces under it; see
``build.ContextBuilder.rebuild``). Jobs run on the scheduler's own threads, so an admin request never holds a
thread of the event loop's executor while it waits; sessions and readers are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb

from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.exceptions import StoreNotOpen
from sinks.context.values import naive_utc
from walduck import metrics
from walduck.timeutil import iso, utcnow

if TYPE_CHECKING:
    from sinks.context.store import ContextStore

log = logging.getLogger(__name__)


def finished_rebuild(
    scope: str, reason: str, elapsed: float, *, error: str | None, lsn: str | None, replayed: int | None
) -> dict[str, Any]:
    """A rebuild that ended (``error`` None: it succeeded), counted in the rebuild metrics; its entry in the
    rebuild history (:meth:`Rebuilds.record`)."""
    result = "ok" if error is None else "error"
    metrics.REBUILDS.labels(scope=scope, result=result).inc()
    metrics.REBUILD_DURATION.labels(scope=scope).observe(elapsed)
    return {
        "scope": scope,
        "reason": reason,
        "result": result,
        "error": error,
        "at": iso(utcnow()),
        "durationMs": round(elapsed * 1000, 2),
        "lsn": lsn,
        "replayedDeltas": replayed,
    }


@dataclass
class RebuildJob:
    dataset_id: str | None
    reasons: list[str]
    requested_at: str = field(default_factory=lambda: iso(utcnow()))
    requests: int = 1
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    @property
    def scope(self) -> str:
        return "dataset" if self.dataset_id else "full"

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the job ran; re-raise its error (every merged requester sees the same outcome)."""
        if not self.done.wait(timeout_s):
            raise TimeoutError(f"rebuild of {self.dataset_id or 'all datasets'} still running")
        if self.error is not None:
            raise self.error


class RebuildScheduler:
    def __init__(self, run: Callable[[str | None, str], None]) -> None:
        self._run = run
        self._cond = threading.Condition()
        self._running: dict[str | None, RebuildJob] = {}
        self._pending: dict[str | None, RebuildJob] = {}

    def submit(self, dataset_id: str | None, reason: str) -> RebuildJob:
        """Queue a rebuild of ``dataset_id`` (None = all); returns at once with the job that will cover it."""
        with self._cond:
            if dataset_id is not None and None in self._pending:
                return self._merge(self._pending[None], reason)
            if dataset_id in self._pending:
                return self._merge(self._pending[dataset_id], reason)
            job = RebuildJob(dataset_id, [reason])
            if dataset_id in self._running:
                self._pending[dataset_id] = job
                return job
            self._running[dataset_id] = job
        threading.Thread(
            target=self._work, args=(job,), name=f"rebuild-{dataset_id or 'all'}", daemon=True
        ).start()
        return job

    @staticmethod
    def _merge(job: RebuildJob, reason: str) -> RebuildJob:
        job.requests += 1
        if reason not in job.reasons:
            job.reasons.append(reason)
        return job

    def _work(self, job: RebuildJob) -> None:
        while True:
            try:
                self._run(job.dataset_id, ", ".join(job.reasons))
            except BaseException as exc:  # handed to every requester (RebuildJob.wait)
                job.error = exc
            with self._cond:
                job.done.set()
                nxt = self._pending.pop(job.dataset_id, None)
                if nxt is None:
                    del self._running[job.dataset_id]
                    self._cond.notify_all()
                    return
                self._running[job.dataset_id] = nxt
            job = nxt

    def pending(self) -> list[dict[str, Any]]:
        """Queued (not yet running) rebuilds, newest first: the admin snapshot's ``pendingInvalidations``."""
        with self._cond:
            jobs = list(self._pending.values())
        return [
            {
                "datasetId": j.dataset_id,
                "scope": j.scope,
                "reason": ", ".join(j.reasons),
                "requestedAt": j.requested_at,
                "requests": j.requests,
            }
            for j in sorted(jobs, key=lambda j: j.requested_at, reverse=True)
        ]

    def running(self) -> list[dict[str, Any]]:
        with self._cond:
            jobs = list(self._running.values())
        return [{"datasetId": j.dataset_id, "scope": j.scope, "reason": ", ".join(j.reasons)} for j in jobs]

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._running, timeout_s)


class Rebuilds:
    """A store's rebuilds from PostgreSQL: the scheduler, the one running now, the last result per dataset.

    ``history`` maps a dataset id (``"*"``: a full rebuild) to its last result ``{scope, reason, result,
    error, at, durationMs, lsn, replayedDeltas}``, written to ``wd.rebuilds`` and read back at open."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store
        self.history: dict[str, dict[str, Any]] = {}
        self.scheduler = RebuildScheduler(self._run)
        self._running = 0

    def load(self, cur: duckdb.DuckDBPyConnection) -> None:
        for did, scope, reason, result, error, at, ms, lsn, replayed in cur.execute(
            f"SELECT dataset_id, scope, reason, result, error, finished_at, duration_ms, lsn, replayed_deltas"
            f" FROM {WD}.rebuilds"
        ).fetchall():
            self.history[did] = {
                "scope": scope,
                "reason": reason,
                "result": result,
                "error": error,
                "at": iso(at) if at else None,
                "durationMs": ms,
                "lsn": lsn,
                "replayedDeltas": replayed,
            }

    def rebuilding(self) -> bool:
        return self._running > 0

    def _run(self, dataset_id: str | None, reason: str) -> None:
        scope = "dataset" if dataset_id else "full"
        started = time.perf_counter()
        self._running += 1
        try:
            self.store.builder.rebuild(dataset_id, scope, started, reason)
        except Exception as exc:
            elapsed = time.perf_counter() - started
            error = f"{type(exc).__name__}: {exc}"[:500]
            info = finished_rebuild(scope, reason, elapsed, error=error, lsn=None, replayed=None)
            log.error("rebuild of %s (%s) failed: %s", dataset_id or "all datasets", reason, error)
            with contextlib.suppress(Exception):  # a closed store cannot keep it: it is logged
                self.record({dataset_id or "*"}, info)
            raise
        finally:
            self._running -= 1

    def record(self, keys: set[str], info: dict[str, Any]) -> None:
        """Keep the last rebuild result per dataset in the context file (read back at open)."""
        st = self.store
        with st._write_lock:
            cur = st._writer
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
                self.history[k] = info
