"""The jobs of this process, by id; lookups are owner-checked (another caller's job does not exist)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sinks.service.iam import Principal
from sinks.service.jobs.exceptions import JobNotFound
from sinks.service.jobs.model import Job


class JobStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: str, principal: Principal) -> Job:
        """The job when ``principal`` owns it; otherwise :class:`JobNotFound` (also for an expired job)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or not job.owned_by(principal) or self.expired(job):
            raise JobNotFound(job_id)
        return job

    def expired(self, job: Job) -> bool:
        return job.state.terminal and self.clock() >= job.expires_at()

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def remove(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.pop(job_id, None)

    def result_bytes(self) -> int:
        """Arrow bytes of the results kept now (bounded by ``WALDUCK_JOBS_RESULTS_MAX_BYTES``)."""
        return sum(j.result.nbytes for j in self.all() if j.result is not None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
