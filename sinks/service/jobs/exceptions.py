"""Named errors of the job service; every one is a ``walduck.errors.WalduckError``."""

from __future__ import annotations

from walduck.errors import WalduckError


class JobError(WalduckError):
    """Base of the job errors. ``message`` is what the client sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobNotFound(JobError):
    """No such job, or one the caller does not own (the same answer: no existence oracle)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id} not found")
        self.job_id = job_id


class JobStateConflict(JobError):
    """The job is not in a state that allows the request (append after run, result before completion)."""


class JobQueueFull(JobError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Too many queued SQL jobs (limit {limit}); retry later")
        self.limit = limit


class InvalidProject(JobError):
    """The project tree, head path or variables are not usable (400)."""


class ScriptRefused(JobError):
    """A script of the chain was refused by the sandbox, the planner, IAM or the guard; ``code`` names which.

    The message is the one ``/sql/read`` gives for the same statement, prefixed with the script's path."""

    def __init__(self, path: str, message: str, code: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.code = code
        self.dataset: str | None = None


class JobCanceled(JobError):
    def __init__(self) -> None:
        super().__init__("Job was canceled")


class JobTimedOut(JobError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"Job exceeded its {timeout_s:g} s timeout and was cancelled")
        self.timeout_s = timeout_s


class ResultSpace(JobError):
    """The kept results of finished jobs would pass ``WALDUCK_JOBS_RESULTS_MAX_BYTES``."""
