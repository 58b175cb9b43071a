"""Several workload writers at once: one process and one catalog connection each, for commit rates a
single connection cannot reach.

Writer ``i`` runs a :class:`~stack.workload.generator.Workload` with seed ``seed * 1000 + i`` on its own
datasets (``workload-<writer seed>.sensors_<n>``), so writers never touch each other's manifests and each may
keep what it read in memory (``owns_datasets``). Each is paced at ``rate / writers`` commits/s and all start
together once every writer has created its datasets. Processes rather than threads: the writers' Python time
then neither competes for the caller's GIL (a caller timing reads would measure it) nor for each other's.

``on_commit(at, lsn)`` is called in the caller's process for a sample of commits (at most ``samples_per_s``
a second over all writers): ``at`` = ``time.monotonic()`` right after the commit and its
``pg_current_wal_lsn()`` in the writer (CLOCK_MONOTONIC is system-wide, so it compares across processes).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stack.workload.generator import RunSummary, Workload

START_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class WriterSpec:
    index: int
    dsn: str
    schema: str
    storage_root: str
    seed: int
    datasets: int
    days: int
    partitions_per_shard: int
    rate: float
    duration: float
    files: str
    mix: dict[str, float] | None
    sample_interval_s: float


def split_datasets(datasets: int, writers: int) -> list[int]:
    """Datasets per writer: ``datasets`` spread as evenly as possible, at least one each."""
    base, extra = divmod(max(datasets, writers), writers)
    return [base + (1 if i < extra else 0) for i in range(writers)]


def merge_summaries(parts: list[RunSummary]) -> RunSummary:
    """One summary for writers that ran side by side (elapsed = the longest writer's)."""
    out = RunSummary()
    for part in parts:
        out.commits += part.commits
        for shape, count in part.operations.items():
            out.operations[shape] = out.operations.get(shape, 0) + count
        out.partitions_added += part.partitions_added
        out.partitions_removed += part.partitions_removed
        out.rows_written += part.rows_written
        out.elapsed_s = max(out.elapsed_s, part.elapsed_s)
        out.dataset_ids.extend(part.dataset_ids)
    out.first_lsn = min((p.first_lsn for p in parts if p.first_lsn), default=0)
    out.last_lsn = max((p.last_lsn for p in parts), default=0)
    return out


def _writer_main(spec: WriterSpec, out: Any, go: Any) -> None:
    try:
        with Workload(
            spec.dsn,
            spec.schema,
            spec.storage_root,
            seed=spec.seed,
            files=spec.files,
            owns_datasets=True,
        ) as wl:
            wl.ensure_datasets(spec.datasets)
            out.put(("ready", spec.index, None))
            if not go.wait(START_TIMEOUT_S):
                return
            cpu0 = time.process_time()
            last = [0.0]

            def sample(summary: RunSummary) -> None:
                now = time.monotonic()
                if summary.last_lsn and now - last[0] >= spec.sample_interval_s:
                    last[0] = now
                    out.put(("commit", now, summary.last_lsn))

            summary = wl.run(
                datasets=spec.datasets,
                days=spec.days,
                partitions_per_shard=spec.partitions_per_shard,
                rate=spec.rate,
                duration=spec.duration,
                mix=spec.mix,
                on_progress=sample,
            )
            files = {"files_written": wl.files_written, "links_made": wl.links_made}
            cpu_s = time.process_time() - cpu0
        out.put(("done", spec.index, (asdict(summary), files, cpu_s)))
    except BaseException:
        out.put(("error", spec.index, traceback.format_exc()))


@dataclass(slots=True)
class WritersResult:
    summary: RunSummary
    per_writer: list[RunSummary]
    files_written: int
    links_made: int
    cpu_s: float  # CPU time of the writer processes while they ran (set-up excluded)


def run_writers(
    dsn: str,
    schema: str,
    storage_root: str | Path,
    *,
    writers: int = 4,
    datasets: int = 8,
    days: int = 3,
    partitions_per_shard: int = 8,
    rate: float = 100.0,
    duration: float = 10.0,
    seed: int = 0,
    files: str = "linked",
    mix: Mapping[str, float] | None = None,
    samples_per_s: float = 20.0,
    on_commit: Callable[[float, int], None] | None = None,
) -> WritersResult:
    """Run ``writers`` workload processes side by side for ``duration`` s at ``rate`` commits/s in total."""
    if writers < 1:
        raise ValueError("writers must be >= 1")
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads and connections
    out = ctx.Queue()
    go = ctx.Event()
    shares = split_datasets(datasets, writers)
    specs = [
        WriterSpec(
            index=i,
            dsn=dsn,
            schema=schema,
            storage_root=str(storage_root),
            seed=seed * 1000 + i,
            datasets=shares[i],
            days=days,
            partitions_per_shard=partitions_per_shard,
            rate=rate / writers if rate > 0 else 0.0,
            duration=duration,
            files=files,
            mix=dict(mix) if mix is not None else None,
            sample_interval_s=writers / samples_per_s if samples_per_s > 0 else float("inf"),
        )
        for i in range(writers)
    ]
    procs = [ctx.Process(target=_writer_main, args=(spec, out, go), daemon=True) for spec in specs]
    for proc in procs:
        proc.start()
    done: dict[int, tuple[dict[str, Any], dict[str, int], float]] = {}
    ready = 0
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while ready < writers:
            kind, index, payload = _get(out, deadline, procs)
            if kind == "error":
                raise RuntimeError(f"workload writer {index} failed:\n{payload}")
            if kind == "ready":
                ready += 1
        go.set()
        deadline = time.monotonic() + duration + START_TIMEOUT_S
        while len(done) < writers:
            kind, first, second = _get(out, deadline, procs)
            if kind == "commit":
                if on_commit is not None:
                    on_commit(first, second)  # (at, lsn)
                continue
            index, payload = first, second
            if kind == "done":
                done[index] = payload
            elif kind == "error":
                raise RuntimeError(f"workload writer {index} failed:\n{payload}")
    finally:
        go.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    per_writer = [RunSummary(**done[i][0]) for i in range(writers)]
    return WritersResult(
        summary=merge_summaries(per_writer),
        per_writer=per_writer,
        files_written=sum(done[i][1]["files_written"] for i in range(writers)),
        links_made=sum(done[i][1]["links_made"] for i in range(writers)),
        cpu_s=sum(done[i][2] for i in range(writers)),
    )


def _get(out: Any, deadline: float, procs: list[Any]) -> tuple[str, Any, Any]:
    """The next message from the writers; raises when none comes before ``deadline`` or all died silently."""
    while True:
        try:
            return out.get(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
        except queue.Empty:
            if time.monotonic() >= deadline:
                raise TimeoutError("workload writers did not report in time") from None
            if not any(p.is_alive() for p in procs):
                raise RuntimeError("every workload writer exited without reporting") from None
