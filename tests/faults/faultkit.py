"""Helpers shared by the fault tests: background workload, metric scraping, the zero-drift check."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from stack.local import Stack
from stack.workload.generator import RunSummary, Workload
from support.truth import assert_sql_matches_truth, run_verify, truth_from_postgres

ALL_SHAPES: dict[str, float] = {
    "ingest": 5,
    "new_manifest_version": 1,
    "retention": 1,
    "compaction": 1,
    "schema_change": 0.5,
    "metadata_change": 0.5,
    "archive": 0.2,
}


@dataclass
class BackgroundWorkload:
    """``Workload.run`` in a thread (its own PostgreSQL connection); ``join()`` returns its summary."""

    stack: Stack
    seed: int
    duration: float
    rate: float = 5.0
    datasets: int = 3
    mix: Mapping[str, float] = field(default_factory=lambda: dict(ALL_SHAPES))
    retry_errors: bool = False
    summary: RunSummary | None = None
    errors: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def start(self) -> BackgroundWorkload:
        self._thread = threading.Thread(target=self._run, name=f"workload-{self.seed}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        s = self.stack.settings
        deadline = time.monotonic() + self.duration
        total = RunSummary()
        attempt = 0
        while time.monotonic() < deadline:
            try:
                with Workload(s.pg_dsn, s.catalog_schema, s.storage_root, seed=self.seed + attempt) as wl:
                    part = wl.run(
                        datasets=self.datasets,
                        days=3,
                        partitions_per_shard=4,
                        rate=self.rate,
                        duration=max(0.0, deadline - time.monotonic()),
                        mix=self.mix,
                    )
                total.commits += part.commits
                total.rows_written += part.rows_written
                for shape, n in part.operations.items():
                    total.operations[shape] = total.operations.get(shape, 0) + n
                total.dataset_ids = sorted(set(total.dataset_ids) | set(part.dataset_ids))
            except Exception as exc:  # PostgreSQL restarting under the workload
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if not self.retry_errors:
                    raise
                attempt += 1
                time.sleep(0.5)
        self.summary = total

    def join(self, timeout: float = 120) -> RunSummary:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "workload thread did not finish"
        assert self.summary is not None, f"workload failed: {self.errors}"
        return self.summary


def metric_value(url: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """Sum of the samples named ``name`` whose labels include ``labels``; None when the metric is absent."""
    text = httpx.get(url, timeout=5).text
    found: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name:
                continue
            if labels and any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            found = (found or 0.0) + sample.value
    return found


@dataclass(frozen=True)
class DriftReport:
    datasets: int
    rows_checked: int
    verify_output: str


def assert_zero_drift(stack: Stack, timeout: float = 180) -> DriftReport:
    """Caught up to PostgreSQL's current LSN; SQL == files for every dataset; ``walduck verify`` exits 0."""
    stack.wait_caught_up(None, timeout)
    truth = truth_from_postgres(stack)
    assert truth, "no datasets in the catalog"
    rows = assert_sql_matches_truth(stack, truth)
    verify = run_verify(stack)
    assert verify.returncode == 0, f"walduck verify found drift:\n{verify.stdout}\n{verify.stderr}"
    return DriftReport(len(truth), rows, verify.stdout.strip()[-400:])
