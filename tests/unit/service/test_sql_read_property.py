"""Property: whatever /sql/read answers 200 opened only files of datasets the caller may read.

Generated statements mix CTEs (recursive or not, nested, shadowing, siblings, quoted path-like names), set
operations, scalar subqueries, and every name an attacker would try (the forbidden dataset's file path and a
glob over the storage dir, catalog views, the forbidden dataset's relation names). The oracle is DuckDB's own
FileSystem log of the reads (``FakeStore.opened_files``), not the policy's or the guard's verdict.
"""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_fake_store import FakeStore

from sinks.service.app import create_app
from sinks.service.audit import MemoryAudit
from sinks.service.settings import QuerySettings

STORE = FakeStore(trace_files=True)
ALLOWED_FILES = {STORE.files["ds-obs"]}
READ = {"x-iam-scopes": "sql:read", "x-iam-user": "mallory"}
APP = create_app(
    STORE,
    QuerySettings(sql_read_scope="sql:read", admin_scope="admin", request_timeout_s=3.0),
    audit=MemoryAudit(),
)

CTE_NAMES = ["a", "b", "A", "x"]
HOSTILE = [
    f'"{STORE.files["ds-sec"]}"',
    f'"{STORE.dir}/*.parquet"',
    f'"{STORE.dir}/**/*.parquet"',
    '"duckdb_views"',
    "pg_settings",
    "sqlite_master",
    "duckdb_tables",
    '"secret"',
    "secret",
    "timestore.secret",
    "timestore.observatory",
    "timestore_runtime.datasets",
    "timestore_runtime.partitions",
    "range(2)",
]


@st.composite
def _query(draw: st.DrawFn, depth: int = 3, target: str | None = None) -> str:
    """A statement around one hostile ``target`` name: CTEs are often named like it and reference it."""
    target = target or draw(st.sampled_from(HOSTILE))
    ref = st.sampled_from([target] * 8 + CTE_NAMES + HOSTILE[:3] + HOSTILE[-4:])
    name = st.sampled_from([target] * 4 + CTE_NAMES[:2])
    shapes = (
        ["with", "with", "union", "scalar", "sub"] if depth == 3 else ["leaf"] * 3 + ["with", "union", "sub"]
    )
    shape = draw(st.sampled_from(shapes if depth else ["leaf"]))
    if shape == "leaf":
        return f"SELECT * FROM {draw(ref)}"
    inner = _query(depth - 1, target)
    if shape == "with":
        rec = "RECURSIVE " if draw(st.booleans()) else ""
        ctes = [f"{draw(name)} AS ({draw(inner)})" for _ in range(draw(st.integers(1, 2)))]
        return f"WITH {rec}{', '.join(ctes)} SELECT * FROM {draw(ref)}"
    if shape == "union":
        op = draw(st.sampled_from(["UNION", "UNION ALL", "EXCEPT"]))
        return f"({draw(inner)}) {op} ({draw(inner)})"
    if shape == "scalar":
        return f"SELECT (SELECT count(*) FROM ({draw(inner)})) AS c"
    return f"SELECT * FROM ({draw(inner)}) s, {draw(ref)}"


async def _read(sql: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=APP), base_url="http://t") as c:
        return await c.post("/sql/read", json={"sql": sql}, headers=READ)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_query())
def test_reads_open_only_readable_files(sql: str) -> None:
    STORE.opened_files()  # reset the log
    r = asyncio.run(_read(sql))
    opened = STORE.opened_files()
    assert r.status_code < 500 or r.status_code == 504, f"{r.status_code} {r.text[:300]}\n{sql}"
    assert "classified" not in r.text, sql
    if r.status_code == 200:
        assert opened <= ALLOWED_FILES, f"opened {opened - ALLOWED_FILES}\n{sql}"
        assert STORE.files["ds-sec"] not in r.text, f"a forbidden file's path was answered\n{sql}"
    assert STORE.files["ds-sec"] not in opened, sql
