"""Per-request limits for DuckDB reads: bounded concurrency, timeout with real cancellation, caps.

* At most ``max_concurrent`` reads run at once (an :class:`asyncio.Semaphore`); a request that cannot
  get a slot within ``queue_wait_s`` is refused with :class:`Saturated` (HTTP 429 + Retry-After).
* DuckDB work runs in a dedicated thread pool of the same size, never on the event loop.
* A :class:`threading.Timer` calls ``cursor.interrupt()`` when the request timeout expires; DuckDB ends
  the query with an interrupt error, the cursor's result is destroyed and the cursor goes back to the
  store's pool, so the worker is free again (:class:`QueryTimeout`, HTTP 504).
* Rows are pulled as Arrow batches of 256 rows; reading stops at ``row_cap`` rows or ``byte_cap`` bytes of
  Arrow buffers, cutting inside a batch, and the result says ``truncated`` exactly when rows were withheld
  (the route then cuts again on the encoded body: ``formats.render_read``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from walduck.errors import WalduckError
from walduck.metrics import QUERY_INFLIGHT

BATCH_ROWS = 256


class Saturated(WalduckError):
    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(f"Too many concurrent SQL queries (limit {limit}); retry later")


class QueryTimeout(WalduckError):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"SQL query exceeded the {timeout_s:g} s timeout and was cancelled")


@dataclass(slots=True)
class ReadResult:
    table: pa.Table
    column_types: list[str]
    truncated: bool
    elapsed_ms: float


def _rows_within(batch: pa.RecordBatch, budget: int) -> int:
    """The longest prefix of ``batch`` whose Arrow bytes fit ``budget`` (binary search on slices:
    ``nbytes`` of a slice counts only the buffer ranges it references)."""
    lo, hi = 0, batch.num_rows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if batch.slice(0, mid).nbytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def run_capped(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: Sequence[Any],
    row_cap: int,
    byte_cap: int,
    skip: int = 0,
) -> tuple[pa.Table, list[str], bool]:
    """Execute and read at most ``row_cap`` rows / ``byte_cap`` Arrow bytes; always destroys the result.

    Batches of ``BATCH_ROWS`` rows; the batch that would pass a cap is cut inside, at the last row that
    fits, so the cap holds whatever the row size (a single row larger than the cap sends no rows).
    ``truncated`` is true exactly when rows were withheld: at a cap, one more batch is pulled to see
    whether anything is left. ``skip``: rows of the result passed over first (a page's offset,
    sinks/service/paging.py).
    """
    relation = cursor.sql(sql, params=list(params) if params else None)
    types = [str(t).upper() for t in relation.types]
    reader = relation.to_arrow_reader(BATCH_ROWS)
    batches: list[pa.RecordBatch] = []
    rows = size = 0
    truncated = False
    try:
        for batch in reader:
            if skip:
                passed = min(skip, batch.num_rows)
                skip -= passed
                batch = batch.slice(passed)
            if batch.num_rows == 0:
                continue
            if rows >= row_cap or size >= byte_cap:
                truncated = True  # a non-empty batch is left after the caps were reached
                break
            take = min(batch.num_rows, row_cap - rows)
            if size + batch.slice(0, take).nbytes > byte_cap:
                take = _rows_within(batch.slice(0, take), byte_cap - size)
            if take < batch.num_rows:
                batch = batch.slice(0, take)
                truncated = True
            if take:
                batches.append(batch)
                rows += take
                size += batch.nbytes
            if truncated:
                break
    finally:
        reader.close()
        try:
            cursor.abort()
        except duckdb.Error:
            pass
    table = pa.Table.from_batches(batches, schema=reader.schema)
    return table, types, truncated


class QueryRunner:
    def __init__(
        self,
        reader: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
        *,
        max_concurrent: int,
        queue_wait_s: float,
        timeout_s: float,
        row_cap: int,
        byte_cap: int,
    ) -> None:
        self._reader = reader
        self.max_concurrent = max_concurrent
        self.queue_wait_s = queue_wait_s
        self.timeout_s = timeout_s
        self.row_cap = row_cap
        self.byte_cap = byte_cap
        self._slots = asyncio.Semaphore(max_concurrent)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="duckdb-read")

    async def acquire(self) -> None:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.queue_wait_s)
        except TimeoutError:
            raise Saturated(self.max_concurrent) from None

    def release(self) -> None:
        self._slots.release()

    def _run_blocking(self, sql: str, params: Sequence[Any], timeout_s: float, skip: int = 0) -> ReadResult:
        started = time.perf_counter()
        with self._reader() as cursor:
            timed_out = threading.Event()

            def cancel() -> None:
                timed_out.set()
                cursor.interrupt()

            timer = threading.Timer(max(timeout_s, 0.001), cancel)
            timer.daemon = True
            timer.start()
            try:
                table, types, truncated = run_capped(cursor, sql, params, self.row_cap, self.byte_cap, skip)
            except duckdb.Error as exc:
                if timed_out.is_set() or isinstance(exc, duckdb.InterruptException):
                    raise QueryTimeout(timeout_s) from exc
                raise
            finally:
                timer.cancel()
        return ReadResult(table, types, truncated, (time.perf_counter() - started) * 1000.0)

    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking context work (planning) on the DuckDB worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run(
        self, sql: str, params: Sequence[Any], timeout_s: float | None = None, skip: int = 0
    ) -> ReadResult:
        """Run inside an acquired slot (call :meth:`acquire` first, :meth:`release` after)."""
        loop = asyncio.get_running_loop()
        QUERY_INFLIGHT.inc()
        try:
            return await loop.run_in_executor(
                self._pool, self._run_blocking, sql, params, timeout_s or self.timeout_s, skip
            )
        finally:
            QUERY_INFLIGHT.dec()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
