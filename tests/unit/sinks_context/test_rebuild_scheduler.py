"""RebuildScheduler: one rebuild at a time per scope, requests merged while one runs (issue 15)."""

from __future__ import annotations

import threading

import pytest

from sinks.context.rebuilds import RebuildScheduler


class Gate:
    """A rebuild function that blocks until released and records what ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str | None, str]] = []
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.active: dict[str | None, int] = {}
        self.max_active: dict[str | None, int] = {}
        self.lock = threading.Lock()
        self.fail: set[str | None] = set()

    def __call__(self, dataset_id: str | None, reason: str) -> None:
        with self.lock:
            self.active[dataset_id] = self.active.get(dataset_id, 0) + 1
            self.max_active[dataset_id] = max(self.max_active.get(dataset_id, 0), self.active[dataset_id])
        self.started.release()
        self.release.wait(10)
        with self.lock:
            self.active[dataset_id] -= 1
            self.ran.append((dataset_id, reason))
        if dataset_id in self.fail:
            raise RuntimeError(f"boom {dataset_id}")


def test_requests_while_running_merge_into_one_pending_job() -> None:
    gate = Gate()
    sched = RebuildScheduler(gate)
    first = sched.submit("ds-a", "r1")
    assert gate.started.acquire(timeout=5)
    queued = [sched.submit("ds-a", reason) for reason in ("r2", "r3", "r2")]
    assert queued[0] is queued[1] is queued[2] and queued[0] is not first
    other = sched.submit("ds-b", "x")  # another scope runs concurrently
    assert gate.started.acquire(timeout=5)
    pending = sched.pending()
    assert [(p["datasetId"], p["reason"], p["requests"]) for p in pending] == [("ds-a", "r2, r3", 3)]
    gate.release.set()
    for job in (first, queued[0], other):
        job.wait(10)
    assert sched.wait_idle(5)
    assert sorted(gate.ran) == [("ds-a", "r1"), ("ds-a", "r2, r3"), ("ds-b", "x")]
    assert gate.max_active == {"ds-a": 1, "ds-b": 1}
    assert sched.pending() == [] and sched.running() == []


def test_dataset_request_joins_a_pending_full_rebuild() -> None:
    gate = Gate()
    sched = RebuildScheduler(gate)
    running = sched.submit(None, "all-1")
    assert gate.started.acquire(timeout=5)
    full = sched.submit(None, "all-2")
    joined = sched.submit("ds-a", "one")
    assert joined is full
    assert [(p["scope"], p["reason"]) for p in sched.pending()] == [("full", "all-2, one")]
    gate.release.set()
    running.wait(10)
    full.wait(10)
    assert gate.ran == [(None, "all-1"), (None, "all-2, one")]


def test_every_merged_requester_sees_the_error_and_the_next_job_still_runs() -> None:
    gate = Gate()
    gate.fail = {"ds-a"}
    sched = RebuildScheduler(gate)
    first = sched.submit("ds-a", "r1")
    assert gate.started.acquire(timeout=5)
    second = sched.submit("ds-a", "r2")
    gate.release.set()
    for job in (first, second):
        with pytest.raises(RuntimeError, match="boom ds-a"):
            job.wait(10)
    assert sched.wait_idle(5)
    assert [r for _, r in gate.ran] == ["r1", "r2"]


def test_topic_specs_apply_the_changes_and_deltas_retention() -> None:
    from stack.services.topics import topic_specs
    from walduck.config import WalduckSettings

    specs = {
        s.name: s.configs
        for s in topic_specs(
            WalduckSettings(
                changes_retention_ms=3_600_000, deltas_retention_ms=60_000, deltas_retention_bytes=1 << 20
            )
        )
    }
    changes, deltas = specs["walduck.changes"], specs["walduck.deltas"]
    assert (changes["retention.ms"], changes["retention.bytes"]) == ("3600000", "-1")
    assert (deltas["retention.ms"], deltas["retention.bytes"]) == ("60000", str(1 << 20))
    assert specs["walduck.dlq"]["retention.ms"] == str(7 * 24 * 3600 * 1000)
