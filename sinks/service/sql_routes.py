"""``/sql/*`` routes (Timestore's SQL HTTP API contract): schema, read (DuckDB context), exec (PostgreSQL), saved queries.

Over 500 lines: the four route groups share one request model, the IAM/audit helpers and the response rendering.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import duckdb
import orjson
import psycopg
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sinks.context import guard
from sinks.service import formats, paging
from sinks.service.audit import (
    ACTION_SAVED_DELETE,
    ACTION_SAVED_UPSERT,
    ACTION_SQL_EXEC,
    ACTION_SQL_READ,
    NO_DATASET_SLUG,
    AuditEntry,
    record_action,
)
from sinks.service.body_limit import OffLoopJsonRoute
from sinks.service.catalog import command_of, exec_statement, privileged_reach
from sinks.service.errors import ApiError, error_json, not_readable
from sinks.service.exec_params import bind_params
from sinks.service.iam import Principal, principal_from_headers
from sinks.service.limits import QueryTimeout, Saturated
from sinks.service.refusals import refusal_of
from sinks.service.sandbox import NOT_SINGLE_SELECT, PolicyViolation, check_read_sql, is_select_only
from sinks.service.state import ServiceState
from walduck.lsn import InvalidLSN, format_lsn, parse_lsn
from walduck.metrics import CACHE_EVENTS, QUERY_GUARD_REFUSALS, QUERY_LIMITS, QUERY_PLANNING

log = logging.getLogger(__name__)
router = APIRouter(tags=["SQL"], route_class=OffLoopJsonRoute)

NO_FILES_WARNING = "Some partitions were unavailable and were skipped after refreshing the SQL runtime."


class SqlQueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1)
    params: list[Any] | None = None
    min_lsn: str | None = Field(None, description="Wait until the contexts applied this LSN (X/Y).")
    cursor: str | None = Field(
        None, description="/sql/read: the nextCursor of a cut answer; returns the rows after it (paging.py)."
    )


class SavedQueryStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rowCount: int | None = Field(None, ge=0)
    elapsedMs: int | None = Field(None, ge=0)


class SavedQueryUpsert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statement: str = Field(min_length=1)
    label: str | None = None
    stats: SavedQueryStats | None = None


def svc(request: Request) -> ServiceState:
    return request.app.state.svc  # type: ignore[no-any-return]


def principal(request: Request) -> Principal:
    return principal_from_headers(request.headers)


def authorize_sql_read(request: Request) -> Principal:
    p = principal(request)
    svc(request).iam.require_sql_read(p)
    return p


def fingerprint(sql: str) -> str:
    return hashlib.sha256(sql.strip().encode()).hexdigest()[:16]


def dedupe(warnings: list[str]) -> list[str]:
    out: list[str] = []
    for w in warnings:
        w = (w or "").strip()
        if w and w not in out:
            out.append(w)
    return out


# --- /sql/schema ---------------------------------------------------------------------------------


def _description(base: str | None, warnings: list[str]) -> str | None:
    parts = [p.strip() for p in [base or "", *warnings] if p and p.strip()]
    return " ".join(parts) if parts else None


@router.get("/sql/schema", summary="Describe SQL schema (only datasets the caller may read)")
async def sql_schema(request: Request) -> dict[str, Any]:
    s = svc(request)
    p = authorize_sql_read(request)
    datasets = await asyncio.to_thread(s.store.datasets)
    allowed = s.readable(p, datasets)
    tables: list[dict[str, Any]] = []
    warnings: list[str] = []
    for d in datasets:
        if d.id not in allowed:
            continue
        alias = [d.alias_warning] if d.alias_warning else []
        warnings.extend(alias)
        details = getattr(d, "column_details", None) or []
        if details:
            columns = [
                {"name": n, "type": t, "nullable": nullable, "description": desc}
                for n, t, nullable, desc in details
            ]
        else:
            columns = [{"name": n, "type": t, "description": None} for n, t in d.columns]
        table: dict[str, Any] = {
            "name": f"timestore.{d.view_name}",
            "description": _description(d.description, alias),
        }
        if d.partition_keys:
            table["partitionKeys"] = list(d.partition_keys)
        table["columns"] = columns
        tables.append(table)
    readable_views = [d for d in datasets if d.id in allowed]
    names: dict[str, list[str]] = {}
    for d in readable_views:
        names.setdefault(d.view_name, []).append(d.slug)
    for view, slugs in sorted(names.items()):
        if len(slugs) > 1:
            warnings.append(
                f"Datasets {', '.join(sorted(slugs))} all sanitise to view timestore.{view}; "
                "reference them with the exact slug."
            )
    return {
        "fetchedAt": formats.iso_millis(dt.datetime.now(dt.UTC)),
        "tables": tables,
        "warnings": dedupe(warnings),
    }


# --- /sql/read -----------------------------------------------------------------------------------


def _referenced(s: ServiceState, datasets: list[Any], views: set[str]) -> dict[str, list[Any]]:
    """view name (lower) -> candidate datasets, matched like the planner: exact slug, then view name."""
    out: dict[str, list[Any]] = {}
    for name in views:
        exact = [d for d in datasets if d.slug.lower() == name]
        by_view = [d for d in datasets if d.view_name.lower() == name and d not in exact]
        out[name] = exact + by_view
    return out


def _freshness_headers(s: ServiceState) -> tuple[str, float | None, dict[str, str]]:
    applied = format_lsn(s.store.applied_lsn())
    staleness = s.staleness_seconds()
    headers = {"x-walduck-applied-lsn": applied}
    if staleness is not None:
        headers["x-walduck-staleness-seconds"] = f"{staleness:.3f}"
    return applied, staleness, headers


def _audit(
    s: ServiceState,
    p: Principal,
    datasets: list[tuple[str | None, str]],
    success: bool,
    metadata: dict[str, Any],
) -> None:
    for dataset_id, slug in datasets or [(None, NO_DATASET_SLUG)]:
        s.audit.record(
            AuditEntry(
                dataset_id=dataset_id,
                dataset_slug=slug,
                actor_id=p.actor_id,
                actor_scopes=list(p.scopes),
                action=ACTION_SQL_READ,
                success=success,
                metadata=metadata,
            )
        )


def reads_everything(s: ServiceState, p: Principal) -> bool:
    """The admin scope reads every dataset: to such a caller an unknown dataset can be called unknown."""
    return s.iam.is_admin(p)


OFF_LOOP_SQL_CHARS = 4096


def _check_text(sql: str, max_length: int) -> Any:
    """Read-only text check (400), length (413), sandbox policy (400), in Timestore's order."""
    if not is_select_only(sql):
        raise ApiError(400, NOT_SINGLE_SELECT)
    if len(sql) > max_length:
        raise ApiError(413, f"SQL statement exceeds maximum length of {max_length} characters")
    try:
        return check_read_sql(sql)
    except PolicyViolation as exc:
        raise ApiError(400, exc.message) from exc


@router.post(
    "/sql/read",
    summary="Execute a read-only SQL query on the live DuckDB context",
    responses={
        200: {
            "content": {
                "application/json": {},
                "text/csv": {},
                "text/plain": {},
                "application/vnd.apache.arrow.stream": {},
            }
        }
    },
)
async def sql_read(
    request: Request,
    body: SqlQueryRequest,
    format: str | None = Query(None, description="json (default), csv, table or arrow"),
    x_min_lsn: str | None = Header(None),
) -> Response:
    received = time.perf_counter()
    s = svc(request)
    p = authorize_sql_read(request)
    try:
        fmt = formats.resolve_format(format, formats.READ_FORMATS)
    except formats.UnsupportedFormat as exc:
        raise ApiError(406, exc.message) from exc
    sql = body.sql
    # Timestore's text checks scan the statement in Python (~0.3 s per MB): off the event loop when long
    if len(sql) > OFF_LOOP_SQL_CHARS:
        checked = await asyncio.to_thread(_check_text, sql, s.settings.sql_max_length)
    else:
        checked = _check_text(sql, s.settings.sql_max_length)

    request_id = f"sql-{uuid.uuid4()}"
    audit_meta = {"requestId": request_id, "fingerprint": fingerprint(sql)}
    page_of = paging.statement_fingerprint(sql, body.params)
    offset = paging.decode(body.cursor, page_of) if body.cursor else 0

    # read-your-writes first: the dataset list used for IAM and planning must include what min_lsn covers
    deadline = received + s.settings.request_timeout_s
    min_lsn_text = body.min_lsn or x_min_lsn
    if min_lsn_text:
        try:
            min_lsn = parse_lsn(min_lsn_text)
        except InvalidLSN as exc:
            raise ApiError(400, f"min_lsn: {exc}") from exc
        if not await s.store.wait_for_lsn(min_lsn, max(deadline - time.perf_counter(), 0.0)):
            applied, _staleness, headers = _freshness_headers(s)
            return error_json(
                503,
                f"Contexts have not applied LSN {format_lsn(min_lsn)} within {s.settings.request_timeout_s:g} s",
                headers={**headers, "Retry-After": "1"},
                appliedLsn=applied,
                minLsn=format_lsn(min_lsn),
            )

    # IAM: every referenced dataset must be readable (the planner re-checks and filters runtime rows)
    datasets = await asyncio.to_thread(s.store.datasets)
    allowed = s.readable(p, datasets)
    referenced = _referenced(s, datasets, checked.views)
    audit_targets: list[tuple[str | None, str]] = []
    everything = reads_everything(s, p)
    for name, candidates in sorted(referenced.items()):
        permitted = [d for d in candidates if d.id in allowed]
        if candidates and not permitted:
            slug = candidates[0].slug
            _audit(s, p, [(candidates[0].id, slug)], False, {**audit_meta, "reason": "forbidden"})
            raise not_readable(name)
        if not candidates and not everything:
            # an unknown dataset answers as a forbidden one: no existence oracle (issue 13 finding 7)
            _audit(s, p, [(None, name)], False, {**audit_meta, "reason": "unknown"})
            raise not_readable(name)
        if permitted:
            audit_targets.append((permitted[0].id, permitted[0].slug))

    try:
        await s.runner.acquire()
    except Saturated as exc:
        raise ApiError(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from exc
    try:
        # a file can disappear between planning and execution (retention/compaction delete files right
        # after their catalog commit): re-plan against the context, which by then no longer lists it
        for attempt in range(MISSING_FILE_RETRIES + 1):
            planned = await _plan(s, p, checked, allowed, audit_meta)
            if attempt < MISSING_FILE_RETRIES and _skipped_files(planned.warnings):
                # a file the context still lists is gone: retention/compaction deleted it after a commit the
                # context has not applied yet. Catch up with the catalog, then plan again; only a file still
                # missing after that (deleted outside the catalog) is skipped with the warning, as Timestore did
                if await _catch_up_with_catalog(s, deadline):
                    continue
            by_id = {d.id: d for d in datasets}
            for did in planned.dataset_ids:
                if did in by_id and all(did != t[0] for t in audit_targets):
                    audit_targets.append((did, by_id[did].slug))
            QUERY_PLANNING.observe(time.perf_counter() - received)
            # hit: answered from the live context; miss: a rebuild from PostgreSQL was running meanwhile
            CACHE_EVENTS.labels(event="miss" if s.store.rebuilding() else "hit").inc()
            warnings = dedupe(list(planned.warnings))
            try:
                result = await s.runner.run(
                    planned.sql,
                    planned.all_params(list(body.params or [])),
                    max(deadline - time.perf_counter(), 0.001),
                    skip=offset,
                )
            except QueryTimeout as exc:
                _audit(s, p, audit_targets, False, {**audit_meta, "reason": "timeout"})
                raise ApiError(504, str(exc)) from exc
            except duckdb.OutOfMemoryException as exc:
                _audit(s, p, audit_targets, False, {**audit_meta, "reason": "memory"})
                raise _out_of_memory(exc) from exc
            except duckdb.Error as exc:
                message = str(exc)
                if not _missing_file(message):
                    _audit(s, p, audit_targets, False, {**audit_meta, "reason": "error"})
                    raise ApiError(_duckdb_error_status(exc), message) from exc
                if attempt < MISSING_FILE_RETRIES and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                CACHE_EVENTS.labels(event="miss").inc()
                asyncio.get_running_loop().run_in_executor(None, s.store.rebuild, None, "missing-files")
                return _read_response(s, fmt, request_id, None, [NO_FILES_WARNING], received, empty=True)
            _audit(s, p, audit_targets, True, audit_meta)
            return _read_response(s, fmt, request_id, result, warnings, received, page=(page_of, offset))
        raise AssertionError("unreachable")
    finally:
        s.runner.release()


MISSING_FILE_RETRIES = 4
# how long one re-plan waits for the contexts to apply the catalog's current LSN
CATCH_UP_WAIT_S = 2.0
_MISSING_FILE_MARKERS = ("no files found", "cannot open file", "no such file", "could not open file")
# DuckDB's errors that a statement, not the service, caused: 400 (everything else from DuckDB: 500)
_CLIENT_DUCKDB_ERRORS: tuple[type[Exception], ...] = (
    duckdb.BinderException,
    duckdb.ParserException,
    duckdb.CatalogException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.OutOfRangeException,
    duckdb.TypeMismatchException,
    duckdb.SyntaxException,
    duckdb.NotImplementedException,
    duckdb.InvalidTypeException,
)


def _skipped_files(warnings: Any) -> bool:
    return any(str(w).startswith("Skipped partition") for w in warnings)


async def _catch_up_with_catalog(s: ServiceState, deadline: float) -> bool:
    """Wait until the contexts applied PostgreSQL's current LSN; False when that cannot be done in time."""
    if s.catalog is None:
        return False
    try:
        lsn = await s.catalog.current_wal_lsn()
    except Exception:  # the catalog being unreachable must not fail a read that can still be answered
        return False
    if lsn <= s.store.applied_lsn():
        return False  # already as new as the catalog: the files are really gone
    return await s.store.wait_for_lsn(lsn, min(CATCH_UP_WAIT_S, max(deadline - time.perf_counter(), 0.0)))


def _out_of_memory(exc: BaseException) -> ApiError:
    """DuckDB's memory_limit or max_temp_directory_size reached: the service is busy, not broken (503)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    temp = "max_temp_directory_size" in str(exc)
    QUERY_LIMITS.labels(limit="temp_space" if temp else "memory").inc()
    setting = (
        "WALDUCK_CONTEXT_DUCKDB_MAX_TEMP_DIRECTORY_SIZE" if temp else "WALDUCK_CONTEXT_DUCKDB_MEMORY_LIMIT"
    )
    return ApiError(
        503,
        f"The query needs more {'temporary disk space' if temp else 'memory'} than the SQL runtime allows "
        f"({setting}); retry later or read less. {first}" + (" (max_temp_directory_size)" if temp else ""),
        headers={"Retry-After": "1"},
    )


def _missing_file(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _MISSING_FILE_MARKERS)


def _duckdb_error_status(exc: BaseException) -> int:
    return 400 if isinstance(exc, _CLIENT_DUCKDB_ERRORS) else 500


async def _plan(s: ServiceState, p: Any, checked: Any, allowed: set[str], audit_meta: dict[str, Any]) -> Any:
    """The planner's rewrite checked by the execution guard; its refusals mapped to 403/400 (refusals.py)."""
    try:
        return await s.runner.in_pool(
            guard.plan_verified, s.planner, checked.expression, s.store, allowed, checked.param_count
        )
    except Exception as exc:
        refusal = refusal_of(exc, reads_everything(s, p))
        if refusal is None:
            raise
        if refusal.kind == "guard":
            # the policy and the planner passed what DuckDB's own parse shows reaches further: a bug, refused
            QUERY_GUARD_REFUSALS.labels(reason=type(exc).__name__).inc()
            log.error("execution guard refused a planned read (%s): %s", audit_meta.get("requestId"), exc)
            _audit(s, p, [(None, NO_DATASET_SLUG)], False, {**audit_meta, "reason": "guard"})
        elif refusal.dataset is not None:
            _audit(s, p, [(None, refusal.dataset)], False, {**audit_meta, "reason": refusal.kind})
            raise not_readable(refusal.dataset) from exc
        raise ApiError(refusal.status, refusal.message) from exc


def _cut(truncated: bool, withheld: bool) -> bool:
    """Rows withheld while rendering (the byte cap on the encoded body); counted once per request."""
    if withheld and not truncated:
        QUERY_LIMITS.labels(limit="byte_cap").inc()
    return truncated or withheld


def _read_response(
    s: ServiceState,
    fmt: str,
    request_id: str,
    result: Any,
    warnings: list[str],
    received: float,
    *,
    empty: bool = False,
    page: tuple[str, int] | None = None,
) -> Response:
    """``page``: (statement fingerprint, offset of the first row) — a cut answer carries the next page's cursor."""
    execution_id = f"duck-{uuid.uuid4()}"

    def next_cursor(truncated: bool, sent: int) -> str | None:
        if not truncated or page is None:
            return None
        cursor = paging.encode(page[1] + sent, page[0])
        headers["x-sql-next-cursor"] = cursor
        return cursor

    applied, staleness, headers = _freshness_headers(s)
    headers = {"x-sql-request-id": request_id, "x-sql-execution-id": execution_id, **headers}
    if warnings:
        # JSON array, non-ASCII escaped (header values must be latin-1; parses to the same strings)
        headers["x-sql-warnings"] = json.dumps(warnings, ensure_ascii=True, separators=(",", ":"))
    cap = s.settings.byte_cap
    if empty:
        names: list[str] = []
        rows: list[dict[str, Any]] = []
        types: list[str] = []
        truncated = False
    else:
        names = list(result.table.column_names)
        types = result.column_types
        truncated = result.truncated
        rows = [] if fmt == "arrow" else formats.table_rows(result.table)
    # the byte cap holds on the encoded body: rows past it are withheld (truncated), whatever their size
    if not empty and result.truncated:
        at_row_cap = result.table.num_rows >= s.settings.row_cap
        QUERY_LIMITS.labels(limit="row_cap" if at_row_cap else "byte_cap").inc()
    if fmt == "json":
        columns = [
            {"name": n, "type": types[i] if i < len(types) else "UNKNOWN", "description": None}
            for i, n in enumerate(names)
        ]

        def envelope(
            rows_json: bytes, count: int, elapsed_ms: float, truncated: bool, cursor: str | None = None
        ) -> dict[str, Any]:
            out = {
                "executionId": execution_id,
                "columns": columns,
                "rows": orjson.Fragment(rows_json),
                "truncated": truncated,
                "warnings": warnings,
                "statistics": {"rowCount": count, "elapsedMs": elapsed_ms},
                "appliedLsn": applied,
                "stalenessSeconds": staleness,
            }
            if cursor is not None:  # only on a cut answer (Timestore's envelope otherwise unchanged)
                out["nextCursor"] = cursor
            return out

        # the envelope without rows, with room for the longest rowCount/elapsedMs values and a cursor
        longest = envelope(b"[]", 10**15, -1.2345678901234567e-300, False, "c" * paging.MAX_CURSOR_CHARS)
        frame = len(formats.json_bytes(longest))
        rows_json, sent = formats.json_rows_within(rows, cap - frame)
        truncated = _cut(truncated, sent < len(rows))
        headers["x-sql-truncated"] = "true" if truncated else "false"
        cursor = next_cursor(truncated, sent)
        elapsed_ms = (time.perf_counter() - received) * 1000.0
        body = formats.json_bytes(envelope(rows_json, sent, elapsed_ms, truncated, cursor))
        return Response(body, media_type="application/json", headers=headers)
    if fmt in ("csv", "table"):
        within = formats.csv_rows_within if fmt == "csv" else formats.table_rows_within
        sent = within(names, rows, cap)
        truncated = _cut(truncated, sent < len(rows))
        headers["x-sql-truncated"] = "true" if truncated else "false"
        next_cursor(truncated, sent)
        render = formats.render_csv if fmt == "csv" else formats.render_table
        text = "" if empty else render(names, rows[:sent])
        return Response(text.encode(), headers={**headers, "content-type": formats.CONTENT_TYPES[fmt]})
    data = b""
    sent = 0
    if not empty:
        data, sent = formats.arrow_within(result.table, cap)
        truncated = _cut(truncated, sent < result.table.num_rows)
    headers["x-sql-truncated"] = "true" if truncated else "false"
    next_cursor(truncated, sent)
    return Response(data, headers={**headers, "content-type": formats.CONTENT_TYPES["arrow"]})


# --- /sql/saved ----------------------------------------------------------------------------------


def _catalog(s: ServiceState) -> Any:
    if s.catalog is None:
        raise ApiError(503, "No PostgreSQL catalog configured (WALDUCK_PG_DSN)")
    return s.catalog


@router.get("/sql/saved", summary="List saved SQL queries")
async def saved_list(request: Request) -> dict[str, Any]:
    authorize_sql_read(request)
    return {"savedQueries": await _catalog(svc(request)).list_saved()}


@router.get("/sql/saved/{query_id}", summary="Get a saved SQL query")
async def saved_get(request: Request, query_id: str) -> Any:
    authorize_sql_read(request)
    record = await _catalog(svc(request)).get_saved(query_id)
    if record is None:
        return error_json(404, f"Saved query {query_id} not found")
    return {"savedQuery": record}


@router.put("/sql/saved/{query_id}", summary="Create or update a saved SQL query")
async def saved_put(request: Request, query_id: str, body: SavedQueryUpsert) -> Any:
    p = authorize_sql_read(request)
    s = svc(request)
    label = body.label.strip() if body.label is not None else None
    stats = body.stats.model_dump(exclude_none=True) if body.stats is not None else None
    meta = {"savedQueryId": query_id, "fingerprint": fingerprint(body.statement)}
    try:
        record = await _catalog(s).upsert_saved(query_id, body.statement, label or None, stats, p.actor_id)
    except ApiError:
        raise
    except Exception:
        record_action(s.audit, p, ACTION_SAVED_UPSERT, False, {**meta, "reason": "error"})
        raise
    record_action(s.audit, p, ACTION_SAVED_UPSERT, True, meta)
    return {"savedQuery": record}


@router.delete("/sql/saved/{query_id}", status_code=204, summary="Delete a saved SQL query")
async def saved_delete(request: Request, query_id: str) -> Response:
    p = authorize_sql_read(request)
    s = svc(request)
    deleted = await _catalog(s).delete_saved(query_id)
    meta: dict[str, Any] = {"savedQueryId": query_id}
    record_action(
        s.audit, p, ACTION_SAVED_DELETE, deleted, meta if deleted else {**meta, "reason": "not-found"}
    )
    if not deleted:
        return error_json(404, f"Saved query {query_id} not found")
    return Response(status_code=204)


# --- /sql/exec (PostgreSQL) ----------------------------------------------------------------------

# SQLSTATE classes that are the caller's fault: data exception, integrity constraint violation, invalid
# transaction state, syntax error or access rule violation, insufficient resources are not among them
_CLIENT_SQLSTATE_CLASSES = {"22", "23", "25", "42"}


def _exec_error_status(exc: BaseException) -> int:
    """400 for statements PostgreSQL rejects as wrong (syntax, unknown column, constraint); anything else,
    the statement timeout included, stays 500 as in Timestore."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if not sqlstate and isinstance(exc, psycopg.DataError | psycopg.ProgrammingError):
        return 400  # refused by psycopg before PostgreSQL saw it: a value it cannot send (NUL in text …)
    return 400 if sqlstate[:2] in _CLIENT_SQLSTATE_CLASSES else 500


@router.post("/sql/exec", summary="Execute a SQL statement on the PostgreSQL catalog (streamed)")
async def sql_exec(
    request: Request,
    body: SqlQueryRequest,
    format: str | None = Query(None, description="json (default), csv or table"),
) -> Response:
    s = svc(request)
    p = principal(request)
    s.iam.require_sql_exec(p)
    try:
        fmt = formats.resolve_format(format, formats.EXEC_FORMATS)
    except formats.UnsupportedFormat as exc:
        raise ApiError(406, exc.message) from exc
    if len(body.sql) > s.settings.sql_max_length:
        raise ApiError(413, f"SQL statement exceeds maximum length of {s.settings.sql_max_length} characters")
    if body.cursor:
        raise ApiError(400, "cursor: only /sql/read answers are paged")
    if "\x00" in body.sql:
        # libpq would cut the statement at the NUL and run the prefix
        raise ApiError(400, "SQL statement contains a NUL character")
    catalog = _catalog(s)
    request_id = f"sql-{uuid.uuid4()}"
    audit_meta: dict[str, Any] = {"requestId": request_id, "fingerprint": fingerprint(body.sql)}
    conn_cm = catalog.connect(exec_role=True)
    conn = await conn_cm.__aenter__()
    if not s.settings.exec_allow_superuser:
        await _refuse_privileged(s, p, conn, conn_cm, audit_meta)
    try:
        cur = await exec_statement(
            conn, body.sql, bind_params(body.params or []), s.settings.exec_statement_timeout_ms
        )
    except Exception as exc:
        await conn_cm.__aexit__(type(exc), exc, exc.__traceback__)
        status = _exec_error_status(exc)
        record_action(s.audit, p, ACTION_SQL_EXEC, False, {**audit_meta, "reason": "error", "status": status})
        raise ApiError(status, str(exc).strip()) from exc
    command = command_of(cur.statusmessage)
    record_action(s.audit, p, ACTION_SQL_EXEC, True, {**audit_meta, "command": command})
    columns = [d.name for d in (cur.description or [])]
    if not columns:
        count = max(cur.rowcount, 0)
        await conn_cm.__aexit__(None, None, None)
        return Response(
            formats.json_bytes({"command": command, "rowCount": count}),
            media_type="application/json",
            headers={"x-sql-request-id": request_id},
        )

    async def all_rows() -> AsyncIterator[tuple[Any, ...]]:
        while batch := await cur.fetchmany(500):
            for row in batch:
                yield row

    return StreamingResponse(
        _exec_body(fmt, columns, all_rows(), conn_cm),
        media_type=formats.CONTENT_TYPES[fmt],
        headers={"x-sql-request-id": request_id},
    )


EXEC_PRIVILEGED = "WALDUCK_EXEC_PRIVILEGED_CONNECTION"


async def _refuse_privileged(
    s: ServiceState, p: Principal, conn: Any, conn_cm: Any, audit_meta: dict[str, Any]
) -> None:
    """403 before anything runs when the exec role could reach the OS (superuser, COPY … PROGRAM, files)."""
    try:
        reach = await privileged_reach(conn)
    except Exception as exc:
        await conn_cm.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    if not reach:
        return
    await conn_cm.__aexit__(None, None, None)
    record_action(
        s.audit, p, ACTION_SQL_EXEC, False, {**audit_meta, "reason": "privileged-connection", "status": 403}
    )
    raise ApiError(
        403,
        f"/sql/exec refuses to run on a privileged PostgreSQL connection (its role reaches {', '.join(reach)}):"
        " set WALDUCK_PG_EXEC_DSN to the walduck_exec role (`walduck catalog roles`), or"
        " WALDUCK_QUERY_EXEC_ALLOW_SUPERUSER=true to accept the risk",
        code=EXEC_PRIVILEGED,
    )


async def _exec_body(
    fmt: str, columns: list[str], rows: AsyncIterator[tuple[Any, ...]], conn_cm: Any
) -> AsyncIterator[bytes]:
    """Stream Timestore's exec writers; an error mid-stream truncates the body (as in Timestore)."""
    writer = formats.ExecWriter(fmt, columns)
    try:
        yield writer.begin()
        async for row in rows:
            yield writer.row(row)
        yield writer.end()
    finally:
        await conn_cm.__aexit__(None, None, None)
