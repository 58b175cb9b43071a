"""``create_app(store, settings)``: the Timestore-compatible SQL API over a live DuckDB context.

Routes: ``/sql/schema``, ``/sql/read``, ``/sql/exec``, ``/sql/saved[/{id}]``, ``/admin/sql/runtime-cache``,
``/admin/sql/runtime-cache/invalidate``, ``/admin/datasets/{id}/manifest``, ``/v1/jobs…`` (sinks/service/jobs), ``/health``, ``/ready``,
``/metrics``; OpenAPI at ``/openapi.json``. See ``docs/api.md``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from sinks.service import admin_routes, sql_routes
from sinks.service.audit import AuditSink, AuditWriter, MemoryAudit
from sinks.service.body_limit import BodyLimit
from sinks.service.catalog import Catalog
from sinks.service.errors import ApiError
from sinks.service.iam import Forbidden, principal_from_headers
from sinks.service.jobs import routes as job_routes
from sinks.service.jobs.service import JobService
from sinks.service.jobs.settings import JobSettings
from sinks.service.limits import QueryRunner
from sinks.service.nul_guard import RejectNul
from sinks.service.settings import QuerySettings
from sinks.service.state import Planner, ServiceState, Store
from walduck.lsn import format_lsn
from walduck.metrics import QUERY_DURATION, QUERY_REQUESTS


def _default_planner() -> Planner:
    from sinks.context.planner import plan

    return plan


def create_app(
    store: Store,
    settings: QuerySettings | None = None,
    *,
    pg_dsn: str | None = None,
    exec_dsn: str | None = None,
    catalog_schema: str = "timestore",
    planner: Planner | None = None,
    audit: AuditSink | None = None,
    job_settings: JobSettings | None = None,
) -> FastAPI:
    """The FastAPI app. ``pg_dsn`` enables /sql/exec, saved queries, manifests and the audit writer;
    ``exec_dsn`` (default ``pg_dsn``) is the role /sql/exec runs as."""
    settings = settings or QuerySettings()
    catalog = Catalog(pg_dsn, catalog_schema, exec_dsn=exec_dsn) if pg_dsn else None
    if audit is None:
        audit = (
            AuditWriter(
                pg_dsn,
                catalog_schema,
                batch_size=settings.audit_batch_size,
                flush_interval_s=settings.audit_flush_interval_s,
            )
            if pg_dsn
            else MemoryAudit()
        )
    runner = QueryRunner(
        store.reader,
        max_concurrent=settings.max_concurrent,
        queue_wait_s=settings.queue_wait_s,
        timeout_s=settings.request_timeout_s,
        row_cap=settings.row_cap,
        byte_cap=settings.byte_cap,
    )
    state = ServiceState(
        store=store,
        settings=settings,
        runner=runner,
        planner=planner or _default_planner(),
        audit=audit,
        catalog=catalog,
    )
    jobs = JobService.build(store, state.planner, state.iam, job_settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if isinstance(audit, AuditWriter):
            audit.start()
        jobs.start()
        try:
            yield
        finally:
            await jobs.stop()
            if isinstance(audit, AuditWriter):
                await audit.stop()
            runner.close()

    app = FastAPI(
        title="walduck SQL service",
        version="1.0",
        description="Timestore-compatible SQL API over DuckDB contexts kept in step with the catalog's WAL.",
        lifespan=lifespan,
    )
    app.state.svc = state
    app.state.jobs = jobs
    app.include_router(sql_routes.router)
    app.include_router(job_routes.router)
    app.include_router(admin_routes.router)
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)  # inside the metrics middleware
    app.add_middleware(RejectNul)
    _install_metrics_middleware(app)
    _install_ops_routes(app, state)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Forbidden)
    async def forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return ApiError(403, exc.message).response()

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = "/".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'} {err.get('msg', 'is invalid')}".strip())
        return ApiError(400, "; ".join(parts) or "invalid request", code="FST_ERR_VALIDATION").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()

    @app.exception_handler(psycopg.DataError)
    async def data_error(_: Request, exc: psycopg.DataError) -> JSONResponse:
        # a value PostgreSQL cannot store (NUL in text, bad encoding) sent by the caller: 400, not 500
        return ApiError(400, str(exc).strip() or "invalid value").response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, str(exc) or type(exc).__name__).response()


def _install_metrics_middleware(app: FastAPI) -> None:
    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            name = getattr(route, "path", "unmatched")
            QUERY_REQUESTS.labels(route=name, status=str(status)).inc()
            QUERY_DURATION.labels(route=name).observe(time.perf_counter() - started)


def _install_ops_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/health", tags=["Ops"], summary="Liveness")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/ready", tags=["Ops"], summary="503 until the contexts have bootstrapped and caught up")
    async def ready() -> JSONResponse:
        staleness = state.staleness_seconds()
        bootstrapped = state.bootstrapped()
        caught_up = staleness is not None and staleness <= state.settings.ready_max_staleness_s
        ok = bootstrapped and caught_up
        body = {
            "status": "ready" if ok else "starting",
            "bootstrapped": bootstrapped,
            "appliedLsn": format_lsn(state.store.applied_lsn()),
            "stalenessSeconds": staleness,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["Ops"], summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        state.iam.require_metrics(principal_from_headers(request.headers))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
