"""A job: its state machine, stages, logs and what it captured at creation (owner, scopes, project)."""

from __future__ import annotations

import datetime as dt
import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from sinks.service.iam import Principal


class JobState(enum.StrEnum):
    PENDING = "pending"
    PREPARING = "preparing"
    RUNNING = "running"
    PUBLISHING = "publishing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED)


class Stage(enum.StrEnum):
    QUEUED = "queued"
    PARSE = "parse"
    LAYER_LOOKUP = "layer_lookup"
    TAIL_REPLAY = "tail_replay"
    HEAD = "head"
    PUBLISH = "publish"
    DONE = "done"


def utc_iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class LogEntry:
    seq: int
    at: float
    level: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": utc_iso(self.at), "level": self.level, "message": self.message}


@dataclass(slots=True)
class JobResult:
    table: pa.Table
    column_types: list[str]
    truncated: bool

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)


@dataclass(eq=False)
class Job:
    id: str
    request_id: str
    principal: Principal
    project: dict[str, str]
    head_path: str
    variables: dict[str, Any]
    timeout_s: float
    ttl_s: float
    min_lsn: int | None
    created_at: float = field(default_factory=time.time)
    state: JobState = JobState.PENDING
    stage: Stage = Stage.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    durations_ms: dict[str, float] = field(default_factory=dict)
    tail_hash: str | None = None
    layer: str = "none"  # hit | partial | miss | none
    scripts_total: int = 0
    scripts_done: int = 0
    error: dict[str, Any] | None = None
    result: JobResult | None = None
    logs: list[LogEntry] = field(default_factory=list)
    log_seq: int = 0
    max_logs: int = 1000
    submitted: bool = False
    # set by cancel(); the runner checks it between statements and interrupts DuckDB at once
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    # the DuckDB connection the job executes on now (interrupt target), under ``lock``
    connection: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, level: str, message: str) -> None:
        """A log line (never row data)."""
        with self.lock:
            self.log_seq += 1
            self.logs.append(LogEntry(self.log_seq, time.time(), level, message))
            if len(self.logs) > self.max_logs:
                del self.logs[: len(self.logs) - self.max_logs]

    def logs_after(self, cursor: int, limit: int) -> list[LogEntry]:
        with self.lock:
            return [e for e in self.logs if e.seq > cursor][:limit]

    def expires_at(self) -> float:
        return (self.finished_at or self.created_at) + self.ttl_s

    def owned_by(self, principal: Principal) -> bool:
        """The creator, holding (at least) the scopes the job was created with."""
        return principal.actor_id == self.principal.actor_id and set(self.principal.scopes) <= set(
            principal.scopes
        )

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        if self.result is not None:
            result = {
                "rowCount": self.result.table.num_rows,
                "columns": [
                    {"name": n, "type": t}
                    for n, t in zip(self.result.table.column_names, self.result.column_types, strict=False)
                ],
                "truncated": self.result.truncated,
                "link": f"/v1/jobs/{self.id}/result",
            }
        return {
            "job_id": self.id,
            "request_id": self.request_id,
            "status": self.state.value,
            "stage": self.stage.value,
            "owner": self.principal.actor_id,
            "head_path": self.head_path,
            "progress": {"scripts_done": self.scripts_done, "scripts_total": self.scripts_total},
            "tail_hash": self.tail_hash,
            "layer": self.layer,
            "durations_ms": dict(self.durations_ms),
            "created_at": utc_iso(self.created_at),
            "started_at": utc_iso(self.started_at),
            "finished_at": utc_iso(self.finished_at),
            "expires_at": utc_iso(self.expires_at()),
            "error": self.error,
            "result": result,
        }
