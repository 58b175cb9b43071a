"""Batched, off-critical-path audit of SQL reads into ``dataset_access_audit`` (Timestore's access-audit table).

Requests only :meth:`AuditWriter.record` (a non-blocking queue put); a background task writes the
queue in batches with one multi-row INSERT. If PostgreSQL is down the batch is retried with backoff;
when the queue is full new entries are dropped and counted (a slow audit store never slows reads).
One row per referenced dataset; a read that references no dataset gets one row with slug ``*``.
``/sql/exec``, saved-query writes and admin invalidations leave one row each (:func:`record_action`),
with the dataset when the request names one, else slug ``*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

log = logging.getLogger(__name__)

ACTION_SQL_READ = "sql.read"
ACTION_SQL_EXEC = "sql.exec"
ACTION_SAVED_UPSERT = "sql.saved.upsert"
ACTION_SAVED_DELETE = "sql.saved.delete"
ACTION_RUNTIME_INVALIDATE = "admin.sql_runtime_cache.invalidate"
NO_DATASET_SLUG = "*"


@dataclass(slots=True)
class AuditEntry:
    dataset_id: str | None
    dataset_slug: str
    actor_id: str | None
    actor_scopes: list[str]
    action: str
    success: bool
    metadata: dict[str, Any] = field(default_factory=dict)


class AuditSink(Protocol):
    def record(self, entry: AuditEntry) -> None: ...


def record_action(
    sink: AuditSink,
    principal: Any,
    action: str,
    success: bool,
    metadata: dict[str, Any],
    *,
    dataset_id: str | None = None,
    dataset_slug: str | None = None,
) -> None:
    """One audit row for a request that is not a dataset read (``principal``: ``iam.Principal``)."""
    sink.record(
        AuditEntry(
            dataset_id=dataset_id,
            dataset_slug=dataset_slug or NO_DATASET_SLUG,
            actor_id=principal.actor_id,
            actor_scopes=list(principal.scopes),
            action=action,
            success=success,
            metadata=metadata,
        )
    )


class MemoryAudit:
    """Keeps entries in a list (unit tests, or when no catalog DSN is configured)."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)


class AuditWriter:
    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        batch_size: int = 200,
        flush_interval_s: float = 0.5,
        max_queue: int = 10_000,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._queue: asyncio.Queue[AuditEntry] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self._pending: list[AuditEntry] = []  # the batch being written (kept until it lands)
        self._inflight: asyncio.Future[None] | None = None
        self.dropped = 0
        self.written = 0

    def record(self, entry: AuditEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Flush what is queued, then stop. A write in flight is awaited, never cancelled: cancelling psycopg
        mid-pipeline broke the connection and raised from the task (AssertionError in psycopg's pipeline
        exit), and lost that batch."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        rest = list(self._pending)
        self._pending = []
        if self._inflight is not None:
            try:
                await self._inflight
                rest = []  # the in-flight write was the pending batch, and it landed
            except (psycopg.Error, OSError):
                pass  # written again below with the rest
            self._inflight = None
        rest += self._drain(self._queue.qsize())
        if rest:
            try:
                await self._write(rest)
            except psycopg.Error as exc:
                log.warning("audit: %d rows lost on shutdown: %s", len(rest), exc)

    async def flush(self) -> None:
        """Write everything queued now (tests, shutdown)."""
        batch = self._drain(self._queue.qsize())
        if batch:
            await self._write(batch)

    def _drain(self, limit: int) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        while len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            first = await self._queue.get()
            await asyncio.sleep(self.flush_interval_s)
            self._pending = [first, *self._drain(self.batch_size - 1)]
            while True:
                # shielded: a stop() waits for this write instead of cancelling it half-way
                self._inflight = asyncio.ensure_future(self._write(self._pending))
                try:
                    await asyncio.shield(self._inflight)
                    self._inflight = None
                    self._pending = []
                    backoff = 0.5
                    break
                except (psycopg.Error, OSError) as exc:
                    self._inflight = None
                    log.warning(
                        "audit: write of %d rows failed (%s); retrying in %.1fs",
                        len(self._pending),
                        exc,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)

    async def _write(self, batch: list[AuditEntry]) -> None:
        try:
            await self._insert(batch, keep_ids=True)
        except psycopg.errors.ForeignKeyViolation:
            # a referenced dataset vanished meanwhile: keep the rows, without the link (FK is SET NULL anyway)
            await self._insert(batch, keep_ids=False)

    async def _insert(self, batch: list[AuditEntry], *, keep_ids: bool) -> None:
        rows = [
            (
                f"daa-{uuid.uuid4()}",
                e.dataset_id if keep_ids else None,
                e.dataset_slug,
                e.actor_id,
                e.actor_scopes,
                e.action,
                e.success,
                Jsonb(e.metadata),
            )
            for e in batch
        ]
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {}.dataset_access_audit (id, dataset_id, dataset_slug, actor_id, actor_scopes,"
                        " action, success, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    ).format(sql.Identifier(self.schema)),
                    rows,
                )
        self.written += len(rows)
