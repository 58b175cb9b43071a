"""The reader pool: a bounded set of cursors on the sandboxed DuckDB instance, and pinned snapshots.

Readers keep their MVCC snapshot while applies commit. A failed or interrupted read replaces its cursor (it
may hold a transaction or a half-read result); a DuckDB error is first shown to ``on_error`` (the store
drops cached directory listings when a file is missing).
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
from collections.abc import Callable, Iterator
from typing import Any

import duckdb

from sinks.context.exceptions import ReaderPoolExhausted

Connect = Callable[[], duckdb.DuckDBPyConnection]


class _Borrowed:
    """A pinned cursor lent to one read: ``close()`` is the owner's (:meth:`Readers.pinned_snapshot`)."""

    __slots__ = ("_cur",)

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def close(self) -> None:
        pass


class Readers:
    def __init__(self, db: Connect, size: int, wait_s: float, on_error: Callable[[str], None]) -> None:
        """``db``: the open instance (raises when the store is closed)."""
        self._db = db
        self._size = size
        self._wait_s = wait_s
        self._on_error = on_error
        self._pool: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        self._pinned: contextvars.ContextVar[_Borrowed | None] = contextvars.ContextVar(
            f"walduck_pinned_snapshot_{id(self)}", default=None
        )

    def fill(self) -> None:
        db = self._db()
        for _ in range(self._size):
            self._pool.put(db.cursor())

    def close(self) -> None:
        while not self._pool.empty():
            with contextlib.suppress(Exception):
                self._pool.get_nowait().close()

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        db = self._db()
        try:
            cur = self._pool.get(timeout=self._wait_s)
        except queue.Empty:
            raise ReaderPoolExhausted(f"all {self._size} reader cursors busy for {self._wait_s}s") from None
        ok = False
        try:
            yield cur
            ok = True
        except duckdb.Error as exc:
            self._on_error(str(exc))
            raise
        finally:
            if not ok:
                # a failed or interrupted read may leave a transaction or a half-read result: replace it
                with contextlib.suppress(Exception):
                    cur.close()
                cur = db.cursor()
            self._pool.put(cur)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one index read: the pinned snapshot's inside :meth:`pinned_snapshot`, else a new one."""
        pinned = self._pinned.get()
        if pinned is not None:
            return pinned  # type: ignore[return-value]
        return self._db().cursor()

    @contextlib.contextmanager
    def pinned_snapshot(self) -> Iterator[None]:
        """Every index read of this thread inside the block sees one DuckDB snapshot (one read transaction).

        The query path plans (partition lists) and verifies the plan (``guard.files_outside``) inside one
        block, so an apply committing in between cannot make the two disagree: the files verified are the
        files planned, as the index listed them at one instant. Only reads may run inside the block."""
        if self._pinned.get() is not None:
            yield
            return
        cur = self._db().cursor()
        cur.execute("BEGIN TRANSACTION")
        token = self._pinned.set(_Borrowed(cur))
        try:
            yield
        finally:
            self._pinned.reset(token)
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK")
            cur.close()
