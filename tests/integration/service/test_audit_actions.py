"""Issue 13 finding 9: /sql/exec, saved-query writes and admin invalidations leave audit rows, as /sql/read does.

Real PostgreSQL catalog (fresh database, migrated and seeded like the contract tests), the real AuditWriter;
the rows are read back from ``timestore.dataset_access_audit``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from integration.service.test_service_contract import serve_env

pytestmark = pytest.mark.integration

READ = {"x-iam-scopes": "sql:read", "x-iam-user": "alice"}
EXEC = {"x-iam-scopes": "sql:read,sql:exec", "x-iam-user": "alice"}
ADMIN = {"x-iam-scopes": "admin", "x-iam-user": "root-ops"}


@pytest.fixture
async def audited(fresh_db: Any, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with serve_env(fresh_db, tmp_path) as e:
        yield e


async def audit_rows(env: dict[str, Any], action: str, expected: int) -> list[dict[str, Any]]:
    """The audit rows of ``action`` once ``expected`` of them are written (the writer is asynchronous)."""
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        await env["audit"].flush()
        with psycopg.connect(env["dsn"]) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            rows = cur.execute(
                "SELECT dataset_id, dataset_slug, actor_id, actor_scopes, action, success, metadata"
                " FROM timestore.dataset_access_audit WHERE action = %s ORDER BY created_at, id",
                [action],
            ).fetchall()
        if len(rows) >= expected:
            break
        await asyncio.sleep(0.05)
    return rows


async def test_exec_success_and_failure_are_audited(audited: dict[str, Any]) -> None:
    client: httpx.AsyncClient = audited["client"]
    ok = await client.post("/sql/exec", json={"sql": "SELECT id FROM sql_samples ORDER BY id"}, headers=EXEC)
    assert ok.status_code == 200, ok.text
    ins = await client.post(
        "/sql/exec",
        json={"sql": "INSERT INTO sql_samples VALUES ($1, $2)", "params": [9, "nine"]},
        headers=EXEC,
    )
    assert ins.json() == {"command": "INSERT", "rowCount": 1}
    bad = await client.post("/sql/exec", json={"sql": "SELECT no_such FROM sql_samples"}, headers=EXEC)
    assert bad.status_code == 400
    rows = {r["metadata"]["requestId"]: r for r in await audit_rows(audited, "sql.exec", 3)}
    assert len(rows) == 3
    assert {ok.headers["x-sql-request-id"], ins.headers["x-sql-request-id"]} < set(rows)
    by_outcome = sorted(rows.values(), key=lambda r: (r["success"], r["metadata"].get("command", "")))
    failed, inserted, selected = by_outcome
    assert failed["success"] is False and failed["metadata"]["reason"] == "error"
    assert failed["metadata"]["status"] == 400
    assert inserted["success"] is True and inserted["metadata"]["command"] == "INSERT"
    assert selected["success"] is True and selected["metadata"]["command"] == "SELECT"
    for r in rows.values():
        assert (r["dataset_id"], r["dataset_slug"], r["actor_id"]) == (None, "*", "alice")
        assert r["actor_scopes"] == ["sql:read", "sql:exec"]
        assert len(r["metadata"]["fingerprint"]) == 16


async def test_saved_query_writes_are_audited(audited: dict[str, Any]) -> None:
    client: httpx.AsyncClient = audited["client"]
    assert (
        await client.put("/sql/saved/q1", json={"statement": "SELECT 1"}, headers=READ)
    ).status_code == 200
    assert (await client.delete("/sql/saved/q1", headers=READ)).status_code == 204
    assert (await client.delete("/sql/saved/q1", headers=READ)).status_code == 404
    [upsert] = await audit_rows(audited, "sql.saved.upsert", 1)
    assert upsert["success"] is True and upsert["metadata"]["savedQueryId"] == "q1"
    assert (upsert["actor_id"], upsert["dataset_slug"]) == ("alice", "*")
    deletes = sorted(await audit_rows(audited, "sql.saved.delete", 2), key=lambda r: not r["success"])
    assert [(d["success"], d["metadata"].get("reason")) for d in deletes] == [
        (True, None),
        (False, "not-found"),
    ]
    # reads of saved queries are not writes: no row
    await client.get("/sql/saved", headers=READ)
    await audited["audit"].flush()
    with psycopg.connect(audited["dsn"]) as conn:
        actions = {r[0] for r in conn.execute("SELECT action FROM timestore.dataset_access_audit")}
    assert actions == {"sql.saved.upsert", "sql.saved.delete"}


async def test_admin_invalidation_is_audited(audited: dict[str, Any]) -> None:
    client: httpx.AsyncClient = audited["client"]
    r = await client.post(
        "/admin/sql/runtime-cache/invalidate",
        json={"datasetSlug": "observatory_timeseries", "reason": "ops"},
        headers=ADMIN,
    )
    assert r.status_code == 202
    r = await client.post("/admin/sql/runtime-cache/invalidate", json={"scope": "all"}, headers=ADMIN)
    assert r.status_code == 202
    rows = await audit_rows(audited, "admin.sql_runtime_cache.invalidate", 2)
    # rows of one batch share created_at: order by what they say
    one, everything = sorted(rows, key=lambda r: r["metadata"]["scope"] != "dataset")
    assert (one["dataset_id"], one["dataset_slug"]) == ("ds-observatory_timeseries", "observatory_timeseries")
    assert one["metadata"] == {"scope": "dataset", "reason": "ops", "rebuild": "dataset"}
    assert (everything["dataset_id"], everything["dataset_slug"]) == (None, "*")
    assert everything["metadata"]["scope"] == "all" and everything["actor_id"] == "root-ops"
    assert one["actor_scopes"] == ["admin"] and one["success"] is True
