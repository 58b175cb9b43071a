"""Issue 13 finding 1: no relation DuckDB resolves on its own — CTE self-references that bind to a file path or a
catalog object — reaches a dataset the caller may not read, through the whole /sql/read path (real DuckDB,
real policy, planner and execution guard over the fake store's Parquet files)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from service_fake_store import FakeStore

from sinks.service.app import create_app
from sinks.service.audit import MemoryAudit
from sinks.service.settings import QuerySettings
from support.hostile_sql import BINDS_TO_A_CTE, CATALOG_RELATIONS, bypass_shapes

READ = {"x-iam-scopes": "sql:read", "x-iam-user": "mallory"}  # may read observatory, not secret
SECRET_WORD = "classified"


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, FakeStore, MemoryAudit]]:
    store, audit = FakeStore(), MemoryAudit()
    settings = QuerySettings(sql_read_scope="sql:read", admin_scope="admin")
    app = create_app(store, settings, audit=audit)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c, store, audit


async def _read(c: httpx.AsyncClient, sql: str, params: list[Any] | None = None) -> httpx.Response:
    return await c.post("/sql/read", json={"sql": sql, "params": params}, headers=READ)


@pytest.mark.parametrize("shape", sorted(bypass_shapes("x")))
async def test_file_path_cte_bypass_is_refused(client: Any, shape: str) -> None:
    c, store, audit = client
    for path in (store.files["ds-sec"], store.dir + "/*.parquet", store.dir + "/**/*.parquet"):
        sql = bypass_shapes(f'"{path}"')[shape]
        r = await _read(c, sql)
        assert SECRET_WORD not in r.text
        if shape in BINDS_TO_A_CTE:  # the reference has a CTE to bind to: that one, never the file
            assert r.status_code == 200 and r.json()["rows"] == [{"x": 1}], r.text[:300]
        else:
            assert 400 <= r.status_code < 500, f"{shape} {path}: {r.status_code} {r.text[:300]}"
    if shape not in BINDS_TO_A_CTE:
        assert not any(e.success for e in audit.entries)


@pytest.mark.parametrize("relation", CATALOG_RELATIONS)
@pytest.mark.parametrize("shape", sorted(bypass_shapes("x")))
async def test_catalog_relations_unreachable(client: Any, relation: str, shape: str) -> None:
    c, store, _ = client
    target = relation if "." in relation else f'"{relation}"'
    r = await _read(c, bypass_shapes(target)[shape])
    if shape in BINDS_TO_A_CTE and "." not in relation:
        assert r.status_code == 200 and r.json()["rows"] == [{"x": 1}], r.text[:300]
    else:
        assert 400 <= r.status_code < 500, f"{shape} {relation}: {r.status_code} {r.text[:300]}"
    assert store.files["ds-sec"] not in r.text  # no view SQL (file paths) in the answer
    r = await _read(c, f"SELECT * FROM {target}")
    assert 400 <= r.status_code < 500, r.text[:300]


async def test_legitimate_ctes_still_answer(client: Any) -> None:
    c, _, _ = client
    cases = {
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT count(*) AS n FROM r": 5,
        'WITH "obs/x.parquet" AS (SELECT * FROM timestore.observatory) SELECT count(*) AS n FROM "obs/x.parquet"': 2,
        "WITH a AS (SELECT 1 AS x) SELECT count(*) AS n FROM (WITH a AS (SELECT 2 AS x UNION ALL SELECT 3) SELECT * FROM a)": 2,
        "WITH a AS (SELECT * FROM timestore.observatory), b AS (SELECT * FROM a) SELECT count(*) AS n FROM b": 2,
        "WITH A AS (SELECT 1 AS x) SELECT count(*) AS n FROM a": 1,
        "WITH a AS (SELECT 7 AS x) SELECT a.x AS n FROM a": 7,
        "WITH a AS (SELECT 7 AS x) SELECT t.x AS n FROM a AS t": 7,
    }
    for sql, expected in cases.items():
        r = await _read(c, sql)
        assert r.status_code == 200, f"{sql}: {r.text[:300]}"
        assert r.json()["rows"] == [{"n": expected}], sql


async def test_parameters_bind_where_written(client: Any) -> None:
    c, _, _ = client
    r = await _read(c, "SELECT ?::INT AS a, ? AS b", [41, "x"])
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [{"a": 41, "b": "x"}]
    r = await _read(c, "SELECT value + ? AS v FROM timestore.observatory WHERE site = ?", [1, "beta"])
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [{"v": pytest.approx(38.1)}]
    r = await _read(c, "SELECT ? AS a, $1 AS b, ? AS c", [1, 2])  # DuckDB numbers these $1, $1, $3
    assert r.status_code == 400  # three positions, two values
    r = await _read(c, "SELECT $name AS a", [1])
    assert r.status_code == 400


async def test_many_relation_references(client: Any) -> None:
    """11+ references: the planner's placeholders are matched exactly (``…_1`` is a prefix of ``…_10``)."""
    c, _, _ = client
    n = 12
    sql = " UNION ALL ".join(f"SELECT {i} AS k, count(*) AS n FROM timestore.observatory" for i in range(n))
    r = await _read(c, f"SELECT sum(n) AS total, count(*) AS parts FROM ({sql})")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [{"total": 2 * n, "parts": n}]
