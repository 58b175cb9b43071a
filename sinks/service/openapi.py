"""The OpenAPI document as the service really answers (issue 17): each route's error statuses, the error body
shapes, and the header IAM as security schemes (``sinks/service/iam.py``: a gateway sets ``x-iam-scopes``).

FastAPI alone declared 422 on every route with a body or parameter (the service answers 400, Timestore's
``FST_ERR_VALIDATION``) and none of 403/404/406/413/429/503/504. ``tests/unit/service/test_openapi.py``
sends requests that make each route answer each status and checks the document lists it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

# every route: a NUL in the path or query (400, sinks/service/nul_guard.py), a body over the limit (413,
# sinks/service/body_limit.py), an unexpected error (500)
EVERY_ROUTE = {400, 413, 500}
ROUTE_ERRORS: dict[tuple[str, str], set[int]] = {
    ("get", "/sql/schema"): {403},
    ("post", "/sql/read"): {403, 406, 429, 503, 504},
    ("get", "/sql/saved"): {403, 503},
    ("get", "/sql/saved/{query_id}"): {403, 404, 503},
    ("put", "/sql/saved/{query_id}"): {403, 503},
    ("delete", "/sql/saved/{query_id}"): {403, 404, 503},
    ("post", "/sql/exec"): {403, 406, 503},
    ("get", "/admin/sql/runtime-cache"): {403},
    ("post", "/admin/sql/runtime-cache/invalidate"): {403},
    ("get", "/admin/datasets/{dataset_ref}/manifest"): {403, 404, 503},
    ("get", "/metrics"): {403},
    ("get", "/ready"): {503},
    ("post", "/v1/jobs"): {403, 429},
    ("post", "/v1/jobs/{job_id}/append"): {403, 404, 409},
    ("post", "/v1/jobs/{job_id}/run"): {403, 404, 409, 429},
    ("get", "/v1/jobs/{job_id}"): {403, 404},
    ("get", "/v1/jobs/{job_id}/logs"): {403, 404},
    ("get", "/v1/jobs/{job_id}/result"): {403, 404, 406, 409},
    ("post", "/v1/jobs/{job_id}/cancel"): {403, 404},
    ("get", "/health"): set(),
    ("get", "/live"): set(),
}
DESCRIPTIONS = {
    400: "Invalid request: body or parameter validation (`FST_ERR_VALIDATION`), not a single SELECT, sandbox "
    "refusal, a DuckDB or PostgreSQL error that is the caller's, a NUL in the path or query",
    403: "Missing a required scope (`x-iam-scopes`), a dataset the caller may not read (or that does not "
    "exist: same answer), or /sql/exec on a privileged connection",
    404: "Not found (saved query, dataset for an admin, manifest; a job that is not the caller's)",
    409: "A job in the wrong state for the request (append or run after it started, result before it completed)",
    406: "Unsupported format",
    413: "Request body over WALDUCK_QUERY_MAX_BODY_BYTES, or SQL over WALDUCK_QUERY_SQL_MAX_LENGTH characters",
    429: "Too many concurrent SQL reads, or the job queue is full; `Retry-After` says when to retry",
    500: "Unexpected error",
    503: "Not available now: the context has not reached `min_lsn`, DuckDB's memory or temp-space limit, no "
    "PostgreSQL catalog configured; /ready: not ready",
    504: "The request timeout (WALDUCK_QUERY_TIMEOUT_S) expired; DuckDB was interrupted",
}
ERROR_SCHEMA = {
    "title": "Error",
    "description": "Thrown errors: `{statusCode, error, message}` (+ `code`); handler-built ones: `{error}`.",
    "type": "object",
    "properties": {
        "statusCode": {"type": "integer"},
        "code": {"type": "string"},
        "error": {"type": "string"},
        "message": {"type": "string"},
    },
    "required": ["error"],
}
SECURITY_SCHEMES = {
    "iamScopes": {
        "type": "apiKey",
        "in": "header",
        "name": "x-iam-scopes",
        "description": "Comma list of the caller's scopes, set by the gateway in front (no tokens; "
        "docs/security.md 'Scopes'). Which scope each route needs: WALDUCK_QUERY_SQL_READ_SCOPE, "
        "WALDUCK_QUERY_SQL_EXEC_SCOPE, WALDUCK_QUERY_ADMIN_SCOPE, WALDUCK_QUERY_METRICS_SCOPE.",
    },
    "iamUser": {
        "type": "apiKey",
        "in": "header",
        "name": "x-iam-user",
        "description": "The actor recorded in the audit log (also x-user-id, x-actor-id); grants nothing.",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "/metrics only: the content of WALDUCK_QUERY_METRICS_TOKEN_FILE (what the k8s PodMonitor sends).",
    },
}
UNGUARDED = {"/health", "/live", "/ready"}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(EVERY_ROUTE | ROUTE_ERRORS.get((method, path), set())):
                responses.setdefault(
                    str(status),
                    {
                        "description": DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
            if path in UNGUARDED:
                op["security"] = []
            elif path == "/metrics":
                op["security"] = [{"iamScopes": []}, {"metricsToken": []}]
            else:
                op["security"] = [{"iamScopes": [], "iamUser": []}, {"iamScopes": []}]
    return spec
