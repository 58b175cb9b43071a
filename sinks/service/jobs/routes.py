"""``/v1/jobs`` routes: create, append, run, status, logs, result, cancel (docs/api.md, "Jobs").

Every route needs the SQL-read scope and answers 404 for a job the caller does not own (same actor,
at least the scopes it was created with): another user's job does not exist.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pyarrow.parquet as pq
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sinks.service import formats
from sinks.service.audit import record_action
from sinks.service.body_limit import OffLoopJsonRoute
from sinks.service.errors import ApiError
from sinks.service.iam import Principal, principal_from_headers
from sinks.service.jobs.exceptions import JobNotFound, JobQueueFull
from sinks.service.jobs.model import Job, JobState
from sinks.service.jobs.service import JobService
from walduck.lsn import InvalidLSN, parse_lsn

router = APIRouter(tags=["Jobs"], route_class=OffLoopJsonRoute)  # large bodies parsed off the loop

ACTION_JOB_CREATE = "sql.job.create"
ACTION_JOB_RUN = "sql.job.run"
ACTION_JOB_CANCEL = "sql.job.cancel"
ACTION_JOB_RESULT = "sql.job.result"
RESULT_FORMATS = ("json", "csv", "arrow", "parquet")
CONTENT_TYPES = {**formats.CONTENT_TYPES, "parquet": "application/vnd.apache.parquet"}


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(None, max_length=200)
    project_tree: dict[str, str] = Field(default_factory=dict, description="script path → SQL text")
    head_path: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    timeout_ms: int | None = Field(None, gt=0)
    job_ttl: float | None = Field(None, gt=0, description="seconds a finished job is kept")
    min_lsn: str | None = None
    run: bool = Field(True, description="false: wait for /append and /run")
    wait_ms: int = Field(0, ge=0, le=60_000, description="wait up to this long for the job to finish")


class JobAppend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project_tree: dict[str, str] = Field(default_factory=dict)
    head_path: str | None = None


class JobRun(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wait_ms: int = Field(0, ge=0, le=60_000)


def _svc(request: Request) -> Any:
    return request.app.state.svc


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


def _principal(request: Request) -> Principal:
    p = principal_from_headers(request.headers)
    _svc(request).iam.require_sql_read(p)
    return p


def _job(request: Request, job_id: str, p: Principal) -> Job:
    try:
        return _jobs(request).jobs.get(job_id, p)
    except JobNotFound as exc:
        raise ApiError(404, exc.message) from exc


def _check_project(js: JobService, tree: dict[str, str]) -> None:
    if len(tree) > js.settings.max_scripts:
        raise ApiError(400, f"project_tree has more than {js.settings.max_scripts} scripts")
    for path, text in tree.items():
        if not path or len(path) > 500 or "\x00" in path or "\x00" in text:
            raise ApiError(400, f"invalid script path or NUL character in {path[:80]!r}")
        if len(text) > js.settings.max_script_chars:
            raise ApiError(413, f"script {path} exceeds {js.settings.max_script_chars} characters")


def _audit(request: Request, p: Principal, action: str, job: Job, success: bool = True, **extra: Any) -> None:
    record_action(
        _svc(request).audit, p, action, success, {"requestId": job.request_id, "jobId": job.id, **extra}
    )


async def _start(request: Request, js: JobService, job: Job, p: Principal, wait_ms: int) -> None:
    if job.head_path is None or job.head_path not in job.project:
        raise ApiError(400, f"head_path {job.head_path} is not in the project tree")
    try:
        js.runner.submit(job)
    except JobQueueFull as exc:
        _audit(request, p, ACTION_JOB_RUN, job, False, reason="queue-full")
        raise ApiError(429, exc.message, headers={"Retry-After": "1"}) from exc
    _audit(request, p, ACTION_JOB_RUN, job)
    task = js.runner.task(job)
    if wait_ms and task is not None:
        await asyncio.wait({task}, timeout=wait_ms / 1000.0)


@router.post(
    "/v1/jobs", status_code=201, summary="Create a SQL job (a chain of scripts); runs it unless run=false"
)
async def create_job(request: Request, body: JobCreate) -> dict[str, Any]:
    p = _principal(request)
    js = _jobs(request)
    _check_project(js, body.project_tree)
    min_lsn: int | None = None
    if body.min_lsn:
        try:
            min_lsn = parse_lsn(body.min_lsn)
        except InvalidLSN as exc:
            raise ApiError(400, f"invalid min_lsn: {exc}") from exc
    timeout_s = min(
        (body.timeout_ms / 1000.0) if body.timeout_ms else js.settings.timeout_s, js.settings.max_timeout_s
    )
    ttl_s = min(body.job_ttl or js.settings.ttl_s, js.settings.max_ttl_s)
    job = Job(
        id=f"job-{uuid.uuid4()}",
        request_id=body.request_id or f"req-{uuid.uuid4()}",
        principal=p,
        project=dict(body.project_tree),
        head_path=body.head_path or "",
        variables=dict(body.variables),
        timeout_s=timeout_s,
        ttl_s=ttl_s,
        min_lsn=min_lsn,
        max_logs=js.settings.max_log_entries,
    )
    js.jobs.add(job)
    _audit(request, p, ACTION_JOB_CREATE, job, scripts=len(job.project))
    job.log("info", f"created with {len(job.project)} script(s)")
    if body.run:
        try:
            await _start(request, js, job, p, body.wait_ms)
        except ApiError:
            js.jobs.remove(job.id)
            raise
    return job.status()


@router.post("/v1/jobs/{job_id}/append", summary="Add scripts to a job not yet run")
async def append_job(request: Request, job_id: str, body: JobAppend) -> dict[str, Any]:
    p = _principal(request)
    js = _jobs(request)
    job = _job(request, job_id, p)
    if job.submitted:
        raise ApiError(409, f"Job {job_id} already runs; append only before /run")
    merged = {**job.project, **body.project_tree}
    _check_project(js, merged)
    job.project = merged
    if body.head_path:
        job.head_path = body.head_path
    job.log("info", f"appended {len(body.project_tree)} script(s)")
    return job.status()


@router.post("/v1/jobs/{job_id}/run", summary="Run a job created with run=false")
async def run_job(request: Request, job_id: str, body: JobRun | None = None) -> dict[str, Any]:
    p = _principal(request)
    js = _jobs(request)
    job = _job(request, job_id, p)
    if job.submitted:
        raise ApiError(409, f"Job {job_id} was already run")
    await _start(request, js, job, p, body.wait_ms if body else 0)
    return job.status()


@router.get("/v1/jobs/{job_id}", summary="Job status: state, stage, progress, tail hash, layer, durations")
async def job_status(request: Request, job_id: str) -> dict[str, Any]:
    p = _principal(request)
    return _job(request, job_id, p).status()


@router.get(
    "/v1/jobs/{job_id}/logs", summary="Job log lines after a cursor (no row data); SSE with stream=true"
)
async def job_logs(
    request: Request,
    job_id: str,
    cursor: int = Query(0, ge=0),
    limit: int = Query(200, ge=1, le=1000),
    stream: bool = Query(False, description="text/event-stream until the job ends"),
) -> Any:
    p = _principal(request)
    job = _job(request, job_id, p)
    if not stream:
        entries = job.logs_after(cursor, limit)
        return {
            "job_id": job.id,
            "status": job.state.value,
            "entries": [e.as_json() for e in entries],
            "next_cursor": entries[-1].seq if entries else cursor,
        }

    async def events() -> AsyncIterator[bytes]:
        seen = cursor
        while True:
            entries = job.logs_after(seen, limit)
            for e in entries:
                seen = e.seq
                yield b"id: %d\ndata: %s\n\n" % (e.seq, orjson.dumps(e.as_json()))
            if job.state.terminal and not entries:
                yield b"event: end\ndata: %s\n\n" % orjson.dumps({"status": job.state.value})
                return
            await asyncio.sleep(0.1)

    return StreamingResponse(events(), media_type="text/event-stream")


@router.get("/v1/jobs/{job_id}/result", summary="The head's rows, paged, as json, csv, arrow or parquet")
async def job_result(
    request: Request,
    job_id: str,
    format: str | None = Query(None, description="json (default), csv, arrow or parquet"),
    offset: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=100_000),
) -> Response:
    p = _principal(request)
    job = _job(request, job_id, p)
    try:
        fmt = formats.resolve_format(format, RESULT_FORMATS)
    except formats.UnsupportedFormat as exc:
        raise ApiError(406, exc.message) from exc
    if job.state is not JobState.COMPLETED or job.result is None:
        _audit(request, p, ACTION_JOB_RESULT, job, False, reason="not-completed")
        raise ApiError(409, f"Job {job_id} has no result (status {job.state.value})")
    result = job.result
    total = result.table.num_rows
    page = result.table.slice(offset, limit)
    next_offset = offset + page.num_rows if offset + page.num_rows < total else None
    _audit(request, p, ACTION_JOB_RESULT, job, format=fmt, offset=offset, rows=page.num_rows)
    headers = {
        "x-job-id": job.id,
        "x-job-total-rows": str(total),
        "x-sql-truncated": "true" if result.truncated else "false",
    }
    if next_offset is not None:
        headers["x-job-next-offset"] = str(next_offset)
    if fmt == "json":
        names = page.column_names
        body = {
            "job_id": job.id,
            "columns": [
                {"name": n, "type": result.column_types[i] if i < len(result.column_types) else "UNKNOWN"}
                for i, n in enumerate(names)
            ],
            "rows": formats.table_rows(page),
            "offset": offset,
            "rowCount": page.num_rows,
            "totalRows": total,
            "nextOffset": next_offset,
            "truncated": result.truncated,
        }
        return Response(formats.json_bytes(body), media_type="application/json", headers=headers)
    if fmt == "csv":
        text = formats.render_csv(page.column_names, formats.table_rows(page))
        return Response(text.encode(), headers={**headers, "content-type": CONTENT_TYPES["csv"]})
    if fmt == "arrow":
        return Response(formats.arrow_ipc(page), headers={**headers, "content-type": CONTENT_TYPES["arrow"]})
    sink = io.BytesIO()
    pq.write_table(page, sink)
    return Response(sink.getvalue(), headers={**headers, "content-type": CONTENT_TYPES["parquet"]})


@router.post("/v1/jobs/{job_id}/cancel", summary="Cancel a job: interrupts DuckDB and frees its slot")
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    p = _principal(request)
    js = _jobs(request)
    job = _job(request, job_id, p)
    was = job.state.value
    if not job.state.terminal:
        js.runner.cancel(job)
        if not job.submitted:
            js.runner.finish(job, JobState.CANCELED, {"code": "canceled", "message": "Job was canceled"})
    _audit(request, p, ACTION_JOB_CANCEL, job, previous=was)
    return job.status()
