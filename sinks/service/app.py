"""``create_app(store, settings)``: the Timestore-compatible SQL API over a live DuckDB context.

Routes: ``/sql/schema``, ``/sql/read``, ``/sql/exec``, ``/sql/saved[/{id}]``, ``/admin/sql/runtime-cache``,
``/admin/sql/runtime-cache/invalidate``, ``/admin/datasets/{id}/manifest``, ``/v1/jobs…`` (sinks/service/jobs), ``/health``, ``/ready``,
``/metrics``; OpenAPI at ``/openapi.json``. See ``docs/api.md``.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
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
from sinks.service.openapi import install_openapi
from sinks.service.settings import QuerySettings
from sinks.service.state import Planner, ServiceState, Store
from walduck.logs import REQUEST_ID
from walduck.lsn import format_lsn
from walduck.metrics import QUERY_DURATION, QUERY_REQUESTS, REGISTRIES


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
    checks: dict[str, Callable[[], bool]] | None = None,
    stopping: Callable[[], bool] | None = None,
    job_settings: JobSettings | None = None,
) -> FastAPI:
    """The FastAPI app. ``pg_dsn`` enables /sql/exec, saved queries, manifests and the audit writer;
    ``exec_dsn`` (default ``pg_dsn``) is the role /sql/exec runs as. ``checks`` are /ready's dependencies
    beyond the contexts (the server adds the deltas consumer's Kafka connection); ``stopping`` says the
    process is shutting down (/ready 503 at once, so the Service stops routing to it)."""
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
        checks=dict(checks or {}),
        stopping=stopping or (lambda: False),
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
    if settings.gzip_min_bytes > 0:
        # inside the metrics middleware (which re-streams every body: gzip there would compress 15-byte answers)
        app.add_middleware(GZipMiddleware, minimum_size=settings.gzip_min_bytes, compresslevel=6)
    _install_metrics_middleware(app)
    _install_ops_routes(app, state)
    install_openapi(app)
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


_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _install_metrics_middleware(app: FastAPI) -> None:
    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        # the caller's x-request-id (a gateway's), else a new one: on every log line of the request and echoed
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID_SHAPE.fullmatch(given) else f"req-{uuid.uuid4().hex[:16]}"
        token = REQUEST_ID.set(request_id)
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["x-request-id"] = request_id
            return response
        finally:
            REQUEST_ID.reset(token)
            route = request.scope.get("route")
            name = getattr(route, "path", "unmatched")
            QUERY_REQUESTS.labels(route=name, status=str(status)).inc()
            QUERY_DURATION.labels(route=name).observe(time.perf_counter() - started)


def _install_ops_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/health", tags=["Ops"], summary="Liveness (the event loop answers)")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/live", tags=["Ops"], summary="Liveness (the event loop answers); = /health")
    async def live() -> dict[str, Any]:
        return {"status": "live", "component": "query"}

    @app.get(
        "/ready",
        tags=["Ops"],
        summary="503 until the contexts have bootstrapped and caught up, the deltas consumer is connected and "
        "PostgreSQL answers; 503 again while stopping",
        responses={503: {"description": "Not ready: the body's checks say which dependency is not"}},
    )
    async def ready() -> JSONResponse:
        staleness = state.staleness_seconds()
        checks = {
            "bootstrapped": state.bootstrapped(),
            "caughtUp": staleness is not None and staleness <= state.settings.ready_max_staleness_s,
        }
        for name, fn in state.checks.items():
            try:
                checks[name] = bool(fn())
            except Exception:  # a check that cannot tell is a check that failed
                checks[name] = False
        if state.catalog is not None:
            checks["postgres"] = await state.postgres_reachable()
        stopping = state.stopping()
        ok = all(checks.values()) and not stopping
        body = {
            "status": "ready" if ok else ("stopping" if stopping else "starting"),
            "bootstrapped": checks["bootstrapped"],
            "appliedLsn": format_lsn(state.store.applied_lsn()),
            "stalenessSeconds": staleness,
            "checks": checks,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["Ops"], summary="Prometheus metrics of this process (the query registry)")
    async def metrics(request: Request) -> Response:
        if not _metrics_token_matches(state.settings, request.headers.get("authorization", "")):
            state.iam.require_metrics(principal_from_headers(request.headers))
        return Response(generate_latest(REGISTRIES["query"]), media_type=CONTENT_TYPE_LATEST)


def _metrics_token_matches(settings: QuerySettings, authorization: str) -> bool:
    """``Authorization: Bearer <token>`` equal to the content of WALDUCK_QUERY_METRICS_TOKEN_FILE (what a PodMonitor's
    ``authorization`` sends); False when no token file is configured, it is empty, or the header differs."""
    if settings.metrics_token_file is None or not authorization.lower().startswith("bearer "):
        return False
    try:
        expected = settings.metrics_token_file.read_text().strip()
    except OSError:
        return False
    given = authorization[len("bearer ") :].strip()
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
