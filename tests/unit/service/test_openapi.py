"""OpenAPI as the service answers (issue 17): requests that make every route answer each status it can, against
the real app; each answered status must be documented for its route (FastAPI declared 422 where the service
answers 400), and each documented one answered here or by the named test. The header IAM is a security scheme."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from sinks.service.app import create_app
from sinks.service.audit import MemoryAudit
from sinks.service.openapi import ROUTE_ERRORS
from sinks.service.settings import QuerySettings
from tests.unit.service.service_fake_store import FakeStore

READ = {"x-iam-scopes": "sql:read"}
EXEC = {"x-iam-scopes": "sql:exec"}
ADMIN = {"x-iam-scopes": "admin"}
METRICS = {"x-iam-scopes": "metrics"}
LONG_SQL = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100000000) SELECT count(*) FROM r"
BIG = b"x" * (64 * 1024 + 1)
SAVED = "/sql/saved/{query_id}"
MANIFEST = "/admin/datasets/{dataset_ref}/manifest"
INVALIDATE = "/admin/sql/runtime-cache/invalidate"
JOBS = "/v1/jobs"
JOB = "/v1/jobs/{job_id}"

# (method, route, url, headers, kwargs, expected status)
CASES: list[tuple[str, str, str, dict[str, str], dict[str, Any], int]] = [
    ("get", "/sql/schema", "/sql/schema", {}, {}, 403),
    ("get", "/sql/schema", "/sql/schema", READ, {}, 200),
    ("post", "/sql/read", "/sql/read", {}, {"json": {"sql": "SELECT 1"}}, 403),
    ("post", "/sql/read", "/sql/read", READ, {"json": {"sql": "SELECT 1"}}, 200),
    ("post", "/sql/read", "/sql/read", READ, {"json": {"sql": 1}}, 400),
    ("post", "/sql/read", "/sql/read", READ, {"json": {"sql": "DELETE FROM t"}}, 400),
    ("post", "/sql/read", "/sql/read?format=xml", READ, {"json": {"sql": "SELECT 1"}}, 406),
    ("post", "/sql/read", "/sql/read", READ, {"json": {"sql": "SELECT 1" + " " * 20_000}}, 413),
    ("post", "/sql/read", "/sql/read", READ, {"json": {"sql": "SELECT 1", "min_lsn": "FF/0"}}, 503),
    ("post", "/sql/read", "/sql/read", READ, {"json": {"sql": LONG_SQL}}, 504),
    ("get", "/sql/saved", "/sql/saved", {}, {}, 403),
    ("get", "/sql/saved", "/sql/saved", READ, {}, 503),
    ("get", SAVED, "/sql/saved/q1", READ, {}, 503),
    ("get", SAVED, "/sql/saved/q1", {}, {}, 403),
    ("put", SAVED, "/sql/saved/q1", READ, {"json": {"statement": "SELECT 1"}}, 503),
    ("put", SAVED, "/sql/saved/q1", READ, {"json": {"statement": ""}}, 400),
    ("put", SAVED, "/sql/saved/q1", {}, {"json": {"statement": "SELECT 1"}}, 403),
    ("delete", SAVED, "/sql/saved/q1", READ, {}, 503),
    ("delete", SAVED, "/sql/saved/q1", {}, {}, 403),
    ("post", "/sql/exec", "/sql/exec", {}, {"json": {"sql": "SELECT 1"}}, 403),
    ("post", "/sql/exec", "/sql/exec", EXEC, {"json": {"sql": "SELECT 1"}}, 503),
    ("post", "/sql/exec", "/sql/exec", EXEC, {"json": {}}, 400),
    ("post", "/sql/exec", "/sql/exec?format=arrow", EXEC, {"json": {"sql": "SELECT 1"}}, 406),
    ("get", "/admin/sql/runtime-cache", "/admin/sql/runtime-cache", {}, {}, 403),
    ("get", "/admin/sql/runtime-cache", "/admin/sql/runtime-cache", ADMIN, {}, 200),
    ("post", INVALIDATE, INVALIDATE, {}, {"json": {}}, 403),
    ("post", INVALIDATE, INVALIDATE, ADMIN, {"json": {"scope": "dataset"}}, 400),
    ("post", INVALIDATE, INVALIDATE, ADMIN, {"json": {"scope": "nonsense"}}, 400),
    ("get", MANIFEST, "/admin/datasets/ds-obs/manifest", ADMIN, {}, 503),
    ("get", "/metrics", "/metrics", {}, {}, 403),
    ("get", "/metrics", "/metrics", METRICS, {}, 200),
    ("get", "/ready", "/ready", {}, {}, 200),
    ("get", "/health", "/health", {}, {}, 200),
    ("get", "/live", "/live", {}, {}, 200),
    ("post", JOBS, JOBS, {}, {"json": {"project_tree": {"a.sql": "SELECT 1"}, "head_path": "a.sql"}}, 403),
    ("post", JOBS, JOBS, READ, {"json": {"project_tree": {"a.sql": "SELECT 1"}, "head_path": "b.sql"}}, 400),
    *[
        case
        for route in (f"{JOB}/append", f"{JOB}/run", f"{JOB}/cancel")
        for case in (
            ("post", route, route.replace("{job_id}", "job-x"), {}, {"json": {}}, 403),
            ("post", route, route.replace("{job_id}", "job-x"), READ, {"json": {}}, 404),
        )
    ],
    *[
        case
        for route in (JOB, f"{JOB}/logs", f"{JOB}/result")
        for case in (
            ("get", route, route.replace("{job_id}", "job-x"), {}, {}, 403),
            ("get", route, route.replace("{job_id}", "job-x"), READ, {}, 404),
        )
    ],
]
# documented, answered only with PostgreSQL or under load: where each is tested
ELSEWHERE = {
    (SAVED, 404): "tests/integration/service/test_service_contract.py (saved queries)",
    (MANIFEST, 404): "tests/integration/service/test_service_contract.py (manifests)",
    (MANIFEST, 403): "tests/integration/service/test_service_contract.py (manifests)",
    ("/sql/read", 429): "tests/unit/service/test_app.py (concurrency)",
    ("/ready", 503): "tests/unit/service/test_ops_routes.py",
    (JOBS, 429): "tests/unit/service/test_jobs.py::test_queue_full_is_429",
    (f"{JOB}/run", 429): "tests/unit/service/test_jobs.py (job slots)",
    (f"{JOB}/run", 409): "tests/unit/service/test_jobs.py (run twice)",
    (f"{JOB}/append", 409): "tests/unit/service/test_jobs.py (append after run)",
    (f"{JOB}/result", 406): "tests/unit/service/test_jobs.py (unsupported format)",
    (f"{JOB}/result", 409): "tests/unit/service/test_jobs.py::test_result_before_completion_is_409",
}


async def _answers() -> tuple[dict[str, Any], dict[tuple[str, str], set[int]]]:
    settings = QuerySettings(
        sql_read_scope="sql:read",
        sql_exec_scope="sql:exec",
        admin_scope="admin",
        metrics_scope="metrics",
        request_timeout_s=1.0,
        max_body_bytes=64 * 1024,
    )
    app = create_app(FakeStore(), settings, audit=MemoryAudit())
    answered: dict[tuple[str, str], set[int]] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        spec = orjson.loads((await client.get("/openapi.json")).content)
        for method, route, url, headers, kwargs, expected in CASES:
            r = await client.request(method, url, headers=headers, **kwargs)
            assert r.status_code == expected, (method, url, r.status_code, r.text[:200])
            answered.setdefault((method, route), set()).add(r.status_code)
        for route, ops in spec["paths"].items():
            for method in ops:
                url = (
                    route.replace("{query_id}", "q1")
                    .replace("{dataset_ref}", "ds-obs")
                    .replace("{job_id}", "job-x")
                )
                nul = await client.request(method, url + "?x=%00", headers=ADMIN)
                big = await client.request(
                    method, url, headers={**ADMIN, "content-type": "application/json"}, content=BIG
                )
                answered.setdefault((method, route), set()).update({nul.status_code, big.status_code})
                assert (nul.status_code, big.status_code) == (400, 413), (method, route)
    return spec, answered


async def test_every_answered_status_is_documented_and_every_documented_one_answered() -> None:
    spec, answered = await _answers()
    problems = []
    for route, ops in spec["paths"].items():
        for method, op in ops.items():
            documented = {int(code) for code in op["responses"]}
            got = answered.get((method, route), set())
            if undocumented := got - documented:
                problems.append(
                    f"{method.upper()} {route} answers {sorted(undocumented)}, not in its OpenAPI"
                )
            errors = {code for code in documented if code >= 400}
            never = errors - got - {500} - {code for (r, code) in ELSEWHERE if r == route}
            if never:
                problems.append(f"{method.upper()} {route} documents {sorted(never)} but never answered them")
            assert (method, route) in ROUTE_ERRORS, f"{method.upper()} {route}: add it to ROUTE_ERRORS"
    assert not problems, "\n".join(problems)
    assert '"422"' not in orjson.dumps(spec).decode()


async def test_header_iam_is_the_security_scheme() -> None:
    spec, _ = await _answers()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["iamScopes"] == {
        **schemes["iamScopes"],
        "type": "apiKey",
        "in": "header",
        "name": "x-iam-scopes",
    }
    assert schemes["metricsToken"]["scheme"] == "bearer"
    for route, ops in spec["paths"].items():
        for op in ops.values():
            names = {name for requirement in op["security"] for name in requirement}
            if route in ("/health", "/live", "/ready"):
                assert op["security"] == [], route
            elif route == "/metrics":
                assert names == {"iamScopes", "metricsToken"}
            else:
                assert "iamScopes" in names, route
