"""Runs jobs: bounded slots of their own, a DuckDB instance per job, stages, cancellation and timeout.

* At most ``max_concurrent`` jobs execute at once (own semaphore and thread pool, so jobs never take the
  interactive ``/sql/read`` slots); up to ``max_queued`` wait (``walduck_job_queue_depth``), more → 429.
* Each execution step opens an in-memory DuckDB instance with the job's ``threads`` and ``memory_limit``,
  attaches the layer (read-write for the tail replay, ``READ_ONLY`` for the head), then applies the context
  store's sandbox settings (``allowed_directories`` = the storage root, ``enable_external_access=false``,
  no extension autoload, ``lock_configuration``) before any job SQL runs.
* Job worker threads run ``SCHED_IDLE`` (or ``thread_nice`` nicer), so the interactive reads win the CPU.
* Cancel and timeout call ``connection.interrupt()`` on the job's current instance; the statement ends with
  DuckDB's interrupt error, the instance is closed and the slot released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb

from sinks.context.naming import quote_ident, quote_literal
from sinks.service.jobs.chain import (
    LAYER_ALIAS,
    ChainPlanner,
    Script,
    Statement,
    base_hash,
    order_chain,
    parse_script,
    settings_fingerprint,
    step_hash,
    substitute,
)
from sinks.service.jobs.exceptions import (
    JobCanceled,
    JobError,
    JobQueueFull,
    JobTimedOut,
    ResultSpace,
    ScriptRefused,
)
from sinks.service.jobs.layers import Layer, LayerCache
from sinks.service.jobs.model import Job, JobResult, JobState, Stage
from sinks.service.jobs.settings import JobSettings
from sinks.service.limits import run_capped
from walduck import metrics

log = logging.getLogger(__name__)


def sandbox_directories(store: Any) -> list[str]:
    """The directories the context store's DuckDB may read: its storage root and allowed directories."""
    dirs: list[str] = []
    root = getattr(store, "storage_root", None)
    if root:
        dirs.append(str(root))
    dirs.extend(str(d) for d in getattr(getattr(store, "settings", None), "allowed_directories", None) or [])
    return [d.rstrip("/") + "/" for d in dirs]


def _lower_priority(nice: int, idle: bool = False) -> None:
    """Lower this worker thread's CPU priority (Linux: per thread; threads DuckDB starts from it inherit it)
    so the interactive /sql/read threads win the CPU over job work: ``SCHED_IDLE`` when ``idle``, else
    ``nice`` more. DuckDB runs a job instance's single thread (``threads=1``) in the calling thread."""
    tid = threading.get_native_id()
    if idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


def _interrupt(job: Job) -> None:
    """Ask ``job`` to stop; interrupt DuckDB now when the job executes."""
    job.cancel_requested.set()
    with job.lock:
        conn = job.connection
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.interrupt()


class JobRunner:
    def __init__(
        self,
        store: Any,
        planner: Callable[..., Any],
        iam: Any,
        settings: JobSettings,
        layers: LayerCache,
        results_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.results_bytes = results_bytes
        self.store = store
        self.planner = planner
        self.iam = iam
        self.settings = settings
        self.layers = layers
        self.max_concurrent = settings.max_concurrent
        self._slots: asyncio.Semaphore | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=settings.max_concurrent,
            thread_name_prefix="duckdb-job",
            initializer=_lower_priority,
            initargs=(settings.thread_nice, settings.thread_idle),
        )
        self._waiting_ids: set[str] = set()
        self._running = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._base_hash = base_hash(settings_fingerprint())
        self._dirs = sandbox_directories(store)
        self._spill = self.layers.dir / "spill"

    # ------------------------------------------------------------------ scheduling
    @property
    def queue_depth(self) -> int:
        return len(self._waiting_ids)

    @property
    def running(self) -> int:
        return self._running

    def submit(self, job: Job) -> None:
        """Queue ``job`` for a slot (counted at once, so a burst of submits sees the queue it makes)."""
        if len(self._waiting_ids) >= self.settings.max_queued + max(0, self.max_concurrent - self._running):
            raise JobQueueFull(self.settings.max_queued)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        job.submitted = True
        job.log("info", "queued")
        self._waiting_ids.add(job.id)
        self._gauge()
        self._tasks[job.id] = asyncio.get_running_loop().create_task(self._execute(job))

    def _gauge(self) -> None:
        metrics.JOB_QUEUE_DEPTH.set(len(self._waiting_ids))
        metrics.JOBS_RUNNING.set(self._running)

    async def _execute(self, job: Job) -> None:
        assert self._slots is not None
        try:
            try:
                # read-your-writes first, holding no slot: a job waiting for its LSN blocks no other job
                waited = time.monotonic()
                if job.min_lsn is not None and not await self.store.wait_for_lsn(job.min_lsn, job.timeout_s):
                    self._tasks.pop(job.id, None)
                    self.finish(
                        job,
                        JobState.FAILED,
                        {
                            "code": "min_lsn",
                            "message": "The contexts did not apply min_lsn within the job timeout",
                        },
                    )
                    return
                # the LSN wait counts against the job's timeout, the wait for a slot does not
                budget = max(0.001, job.timeout_s - (time.monotonic() - waited))
                await self._slots.acquire()
            finally:
                self._waiting_ids.discard(job.id)
                self._gauge()
        except asyncio.CancelledError:
            self._tasks.pop(job.id, None)
            self.finish(job, JobState.CANCELED, {"code": "canceled", "message": "Job was canceled"})
            return
        self._running += 1
        self._gauge()
        try:
            if job.cancel_requested.is_set():
                self.finish(job, JobState.CANCELED, {"code": "canceled", "message": "Job was canceled"})
                return
            await asyncio.get_running_loop().run_in_executor(self._pool, self._run_blocking, job, budget)
        except Exception as exc:  # a bug: the job still ends, visibly
            log.exception("job %s failed unexpectedly", job.id)
            self.finish(job, JobState.FAILED, {"code": "internal", "message": str(exc) or type(exc).__name__})
        finally:
            self._running -= 1
            self._gauge()
            self._slots.release()
            self._tasks.pop(job.id, None)

    def task(self, job: Job) -> asyncio.Task[None] | None:
        """The asyncio task executing ``job`` (None once it ended)."""
        return self._tasks.get(job.id)

    def cancel(self, job: Job) -> None:
        """Interrupt DuckDB now when the job executes; drop it from the queue when it waits."""
        _interrupt(job)
        task = self._tasks.get(job.id)
        if task is not None and job.id in self._waiting_ids:
            task.cancel()  # still waiting for a slot: it never runs

    def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ execution (worker thread)
    def finish(self, job: Job, state: JobState, error: dict[str, Any] | None = None) -> None:
        if job.state.terminal:
            return
        job.state = state
        job.stage = Stage.DONE
        job.error = error
        job.finished_at = time.time()
        if job.started_at is not None:
            total = job.finished_at - job.started_at
            job.durations_ms["total"] = round(total * 1000.0, 3)
            metrics.JOB_STAGE_SECONDS.labels(stage="total").observe(total)
        outcome = state.value if not (error and error.get("code") == "timeout") else "timeout"
        metrics.JOBS_FINISHED.labels(outcome=outcome).inc()
        log.info(
            "job %s (request %s, owner %s) %s: layer %s, tail %s, durations_ms %s%s",
            job.id,
            job.request_id,
            job.principal.actor_id,
            state.value,
            job.layer,
            job.tail_hash,
            job.durations_ms,
            f", error {error['code']}" if error else "",
        )
        job.log(
            "info" if state is JobState.COMPLETED else "warning",
            f"{state.value}" + (f": {error['message']}" if error else ""),
        )

    @contextlib.contextmanager
    def _stage(self, job: Job, stage: Stage) -> Iterator[None]:
        if job.cancel_requested.is_set():
            raise JobCanceled()
        job.stage = stage
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            job.durations_ms[stage.value] = round(
                job.durations_ms.get(stage.value, 0.0) + elapsed * 1000.0, 3
            )
            metrics.JOB_STAGE_SECONDS.labels(stage=stage.value).observe(elapsed)

    @contextlib.contextmanager
    def _instance(self, job: Job, layer: Path | None, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        self._spill.mkdir(parents=True, exist_ok=True)
        conn = duckdb.connect(
            ":memory:",
            config={
                "threads": self.settings.duckdb_threads,
                "memory_limit": self.settings.memory_limit,
                "temp_directory": str(self._spill / job.id),
            },
        )
        try:
            if layer is not None:
                mode = " (READ_ONLY)" if read_only else ""
                conn.execute(f"ATTACH {quote_literal(str(layer))} AS {LAYER_ALIAS}{mode}")
            conn.execute("SET allowed_directories = ?", [self._dirs])
            conn.execute("SET enable_external_access = false")
            conn.execute("SET autoload_known_extensions = false")
            conn.execute("SET autoinstall_known_extensions = false")
            conn.execute("SET allow_community_extensions = false")
            conn.execute("SET lock_configuration = true")
            with job.lock:
                job.connection = conn
            if job.cancel_requested.is_set():
                raise JobCanceled()
            yield conn
        finally:
            with job.lock:
                job.connection = None
            conn.close()
            shutil.rmtree(self._spill / job.id, ignore_errors=True)

    def _planner_for(self, job: Job) -> ChainPlanner:
        allowed = self.iam.readable(job.principal, self.store.datasets())
        return ChainPlanner(self.store, self.planner, allowed, self.iam.is_admin(job.principal))

    def _run_blocking(self, job: Job, budget_s: float) -> None:
        job.started_at = time.time()
        job.state = JobState.PREPARING
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            _interrupt(job)

        timer = threading.Timer(budget_s, on_timeout)
        timer.daemon = True
        timer.start()
        layer: Layer | None = None
        try:
            layer = self._run_stages(job)
        except Exception as exc:
            if timed_out.is_set():
                self.finish(
                    job, JobState.FAILED, {"code": "timeout", "message": JobTimedOut(job.timeout_s).message}
                )
            elif job.cancel_requested.is_set():
                self.finish(job, JobState.CANCELED, {"code": "canceled", "message": JobCanceled().message})
            elif isinstance(exc, ScriptRefused):
                error: dict[str, Any] = {"code": exc.code, "message": exc.message, "path": exc.path}
                if exc.dataset:
                    error["dataset"] = exc.dataset
                self.finish(job, JobState.FAILED, error)
            elif isinstance(exc, ResultSpace):
                self.finish(job, JobState.FAILED, {"code": "result_space", "message": exc.message})
            elif isinstance(exc, JobError):
                self.finish(job, JobState.FAILED, {"code": "job", "message": exc.message})
            elif isinstance(exc, duckdb.Error):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                code = "memory" if isinstance(exc, duckdb.OutOfMemoryException) else "duckdb"
                self.finish(job, JobState.FAILED, {"code": code, "message": first})
            else:
                raise
        finally:
            timer.cancel()
            self.layers.release(layer)

    def _run_stages(self, job: Job) -> Layer | None:
        with self._stage(job, Stage.PARSE):
            tail, head = order_chain(job.project, job.head_path)
            tail = [substitute(s, job.variables) for s in tail]
            head = substitute(head, job.variables)
            parsed = [(s, parse_script(s)) for s in tail]
            head_nodes = parse_script(head)
            job.scripts_total = len(tail) + 1
            job.log("info", f"chain: {len(tail)} tail script(s), head {head.path}")
        layer: Layer | None = None
        with self._stage(job, Stage.LAYER_LOOKUP):
            chain = self._planner_for(job)
            objects: set[str] = set()
            planned: list[tuple[Script, list[Statement]]] = []
            hashes: list[str] = []
            previous = self._base_hash
            for script, nodes in parsed:
                statements = [chain.statement(script.path, n, objects, head=False) for n in nodes]
                objects |= {s.name for s in statements if s.name}
                planned.append((script, statements))
                previous = step_hash(previous, script, statements)
                hashes.append(previous)
            job.tail_hash = hashes[-1] if hashes else None
            covered, layer = self.layers.acquire_longest(hashes)
            if not tail:
                job.layer = "none"
            elif covered == len(hashes):
                job.layer = "hit"
            else:
                job.layer = "partial" if covered else "miss"
            metrics.JOB_LAYER_LOOKUPS.labels(result=job.layer).inc()
            job.log(
                "info", f"layer {job.layer}" + (f" ({covered}/{len(hashes)} scripts cached)" if tail else "")
            )
        job.state = JobState.RUNNING
        job.scripts_done = covered
        if tail and covered < len(hashes):
            with self._stage(job, Stage.TAIL_REPLAY):
                layer = self._replay(job, planned, hashes, covered, layer, objects)
        job.scripts_done = len(tail)
        with self._stage(job, Stage.HEAD):
            if len(head_nodes) != 1:
                raise ScriptRefused(head.path, "the head is one query", "sandbox")
            statement = chain.statement(head.path, head_nodes[0], objects, head=True)
            for w in statement.warnings:
                job.log("warning", w)
            with self._instance(job, layer.path if layer else None, read_only=True) as conn:
                table, types, truncated = run_capped(
                    conn, statement.sql, statement.params, self.settings.row_cap, self.settings.byte_cap
                )
            job.scripts_done = job.scripts_total
        job.state = JobState.PUBLISHING
        with self._stage(job, Stage.PUBLISH):
            held = self.results_bytes()
            if held + table.nbytes > self.settings.results_max_bytes:
                raise ResultSpace(
                    f"The kept job results hold {held} bytes; this result ({table.nbytes} bytes) would pass "
                    f"WALDUCK_JOBS_RESULTS_MAX_BYTES ({self.settings.results_max_bytes}). Retry after older jobs "
                    "expire (job_ttl), or read less."
                )
            job.result = JobResult(table, types, truncated)
            job.log("info", f"result: {table.num_rows} row(s)" + (" (truncated)" if truncated else ""))
        self.finish(job, JobState.COMPLETED)
        return layer

    def _replay(
        self,
        job: Job,
        planned: list[tuple[Script, list[Statement]]],
        hashes: list[str],
        covered: int,
        base: Layer | None,
        objects: set[str],
    ) -> Layer:
        """Run the uncached tail scripts into a copy of the longest cached prefix, publish the full layer."""
        started = time.perf_counter()
        tmp = self.layers.new_tmp(hashes[-1], base)
        self.layers.release(base)
        try:
            with self._instance(job, tmp, read_only=False) as conn:
                for script, statements in planned[covered:]:
                    for st in statements:
                        if job.cancel_requested.is_set():
                            raise JobCanceled()
                        if st.kind != "table":
                            continue  # a query in the tail makes no object; it was checked and planned
                        target = f"{LAYER_ALIAS}.main.{quote_ident(st.name or '')}"
                        verb = "CREATE OR REPLACE TABLE" if st.or_replace else "CREATE TABLE"
                        if st.if_not_exists:
                            verb = "CREATE TABLE IF NOT EXISTS"
                        conn.execute(f"{verb} {target} AS {st.sql}", st.params or None)
                    job.scripts_done += 1
                    job.log("info", f"replayed {script.path}")
            layer = self.layers.publish(hashes[-1], tmp, objects)
        except BaseException:
            self.layers.discard_tmp(tmp)
            raise
        job.log("info", f"tail replayed in {(time.perf_counter() - started) * 1000.0:.1f} ms")
        return layer
