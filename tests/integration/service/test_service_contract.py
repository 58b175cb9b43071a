"""§6 behaviours of Timestore's sql.test.ts replayed against the real context store + PostgreSQL catalog.

Catalog: migrated with ``apply_migrations`` in a fresh database; dataset ``observatory_timeseries`` with one
real Parquet partition (shard 2024-01-01, timestamp/site/value) and a guarded dataset ``secret_ds``
(``metadata.iam.readScopes``); the context is loaded with ``store.rebuild()`` (reads PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg.types.json import Jsonb

from sinks.context.store import ContextStore
from sinks.service.app import create_app
from sinks.service.audit import AuditWriter
from sinks.service.settings import QuerySettings
from sinks.settings import SinkSettings
from stack.catalog.migrate import apply_migrations
from stack.catalog.roles import EXEC_ROLE, ensure_roles
from walduck.config import WalduckSettings

pytestmark = pytest.mark.integration

READ = {"x-iam-scopes": "sql:read", "x-iam-user": "alice"}
EXEC = {"x-iam-scopes": "sql:read,sql:exec", "x-iam-user": "alice"}
ADMIN = {"x-iam-scopes": "admin"}
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def seed_catalog(dsn: str, storage: Path) -> None:
    apply_migrations(dsn, "timestore")
    rows = {
        "observatory_timeseries": pa.table(
            {
                "timestamp": pa.array([datetime(2024, 1, 1, 0), datetime(2024, 1, 1, 1)], pa.timestamp("us")),
                "site": ["alpha", "beta"],
                "value": [42.5, 37.1],
            }
        ),
        "secret_ds": pa.table(
            {"timestamp": pa.array([datetime(2024, 1, 1, 0)], pa.timestamp("us")), "payload": ["classified"]}
        ),
    }
    schemas = {
        "observatory_timeseries": [
            {"name": "timestamp", "type": "timestamp"},
            {"name": "site", "type": "string"},
            {"name": "value", "type": "double"},
        ],
        "secret_ds": [{"name": "timestamp", "type": "timestamp"}, {"name": "payload", "type": "string"}],
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path TO timestore, public")
        conn.execute(
            "INSERT INTO storage_targets (id, name, kind, config) VALUES"
            " ('st-timestore-default-local', 'timestore-default-local', 'local', %s)",
            [Jsonb({"root": str(storage)})],
        )
        for slug, table in rows.items():
            meta = {"iam": {"readScopes": ["secret:read"]}} if slug == "secret_ds" else {}
            did = f"ds-{slug}"
            rel = f"{slug}/window=2024-01-01/part-{slug}.parquet"
            (storage / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, storage / rel)
            conn.execute(
                "INSERT INTO datasets (id, slug, name, description, metadata, default_storage_target_id)"
                " VALUES (%s, %s, %s, %s, %s, 'st-timestore-default-local')",
                [did, slug, slug, f"{slug} dataset", Jsonb(meta)],
            )
            conn.execute(
                "INSERT INTO dataset_schema_versions (id, dataset_id, version, schema) VALUES (%s, %s, 1, %s)",
                [f"dsv-{slug}", did, Jsonb({"fields": schemas[slug]})],
            )
            conn.execute(
                "INSERT INTO dataset_manifests (id, dataset_id, version, status, schema_version_id,"
                " manifest_shard, partition_count, total_rows, total_bytes, created_by, published_at)"
                " VALUES (%s, %s, 1, 'published', %s, '2024-01-01', 1, %s, %s, 'tests', now())",
                [f"dm-{slug}", did, f"dsv-{slug}", table.num_rows, (storage / rel).stat().st_size],
            )
            conn.execute(
                "INSERT INTO dataset_partitions (id, dataset_id, manifest_id, manifest_shard, partition_key,"
                " storage_target_id, file_format, file_path, file_size_bytes, row_count, start_time, end_time,"
                " metadata) VALUES (%s, %s, %s, '2024-01-01', %s, 'st-timestore-default-local', 'parquet',"
                " %s, %s, %s, %s, %s, %s)",
                [
                    f"part-{slug}",
                    did,
                    f"dm-{slug}",
                    Jsonb({"window": "2024-01-01"}),
                    rel,
                    (storage / rel).stat().st_size,
                    table.num_rows,
                    T0,
                    datetime(2024, 1, 1, 1, tzinfo=UTC),
                    Jsonb({"tableName": "records"}),
                ],
            )
        conn.execute("CREATE TABLE sql_samples (id int, label text)")
        conn.execute("INSERT INTO sql_samples VALUES (1, 'one'), (2, 'two')")


@pytest.fixture
async def env(fresh_db: Any, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with serve_env(fresh_db, tmp_path) as e:
        yield e


def seeded_catalog(fresh_db: Any, tmp_path: Path) -> tuple[str, Path, WalduckSettings]:
    """A fresh database holding :func:`seed_catalog`'s catalog (files under ``tmp_path/storage``): its DSN, the
    storage root and one-partition settings over them."""
    dsn = fresh_db()
    storage = tmp_path / "storage"
    storage.mkdir()
    seed_catalog(dsn, storage)
    walduck = WalduckSettings(
        data_dir=tmp_path / "data", storage_root=storage, pg_dsn=dsn, topic_partitions=1
    )
    return dsn, storage, walduck


@contextlib.asynccontextmanager
async def serve_env(fresh_db: Any, tmp_path: Path, **sink: Any) -> AsyncIterator[dict[str, Any]]:
    dsn, storage, walduck = seeded_catalog(fresh_db, tmp_path)
    store = ContextStore(
        SinkSettings(context_path=tmp_path / "ctx" / "c.duckdb", view_refresh_interval_s=0.0, **sink), walduck
    )
    store.open()
    store.rebuild(None, "test-bootstrap")
    settings = QuerySettings(
        sql_read_scope="sql:read", sql_exec_scope="sql:exec", admin_scope="admin", request_timeout_s=3.0
    )
    audit = AuditWriter(dsn, "timestore", flush_interval_s=0.05)
    # /sql/exec as the least-privilege exec role (`walduck catalog roles`), as deployed
    exec_dsn = ensure_roles(dsn, walduck)[EXEC_ROLE]
    app = create_app(store, settings, pg_dsn=dsn, exec_dsn=exec_dsn, audit=audit)
    audit.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30)
    try:
        yield {"client": client, "store": store, "dsn": dsn, "storage": storage, "audit": audit}
    finally:
        await client.aclose()
        await audit.stop()
        app.state.svc.runner.close()
        store.close()


SQL = {"sql": "SELECT site, value FROM timestore.observatory_timeseries ORDER BY site"}


async def test_read_json_csv_table(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    r = await client.post("/sql/read", json=SQL, headers=READ)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["name"] for c in body["columns"]] == ["site", "value"]
    assert body["rows"] == [{"site": "alpha", "value": 42.5}, {"site": "beta", "value": 37.1}]
    assert body["statistics"]["rowCount"] == 2 and isinstance(body["warnings"], list)
    assert r.headers["x-sql-execution-id"].startswith("duck-")
    assert "/" in r.headers["x-walduck-applied-lsn"]
    r = await client.post("/sql/read?format=csv", json=SQL, headers=READ)
    assert r.content == b"site,value\nalpha,42.5\nbeta,37.1"
    r = await client.post("/sql/read?format=table", json=SQL, headers=READ)
    assert r.text.endswith("(2 rows)")
    r = await client.post(
        "/sql/read", json={"sql": "DELETE FROM timestore.observatory_timeseries"}, headers=READ
    )
    assert r.status_code == 400 and r.json()["message"]


async def test_read_audited_in_postgres(env: dict[str, Any]) -> None:
    r = await env["client"].post("/sql/read", json=SQL, headers=READ)
    request_id = r.headers["x-sql-request-id"]
    rows: list[Any] = []
    for _ in range(100):
        await asyncio.sleep(0.05)
        with psycopg.connect(env["dsn"]) as conn:
            rows = conn.execute(
                "SELECT dataset_id, dataset_slug, actor_id, actor_scopes, action, success, metadata"
                " FROM timestore.dataset_access_audit WHERE metadata->>'requestId' = %s",
                [request_id],
            ).fetchall()
        if rows:
            break
    assert rows == [
        (
            "ds-observatory_timeseries",
            "observatory_timeseries",
            "alice",
            ["sql:read"],
            "sql.read",
            True,
            {"requestId": request_id, "fingerprint": rows[0][6]["fingerprint"]},
        )
    ]


async def test_missing_file_gives_zero_rows(env: dict[str, Any]) -> None:
    for f in (env["storage"] / "observatory_timeseries").rglob("*.parquet"):
        f.unlink()
    r = await env["client"].post(
        "/sql/read", json={"sql": "SELECT count(*) AS n FROM timestore.observatory_timeseries"}, headers=READ
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [{"n": 0}]
    assert any("Skipped partition" in w for w in r.json()["warnings"])


async def test_file_deleted_between_planning_and_execution_is_replanned(env: dict[str, Any]) -> None:
    """Retention/compaction delete files right after their catalog commit; a read planned just before
    must not fail with 500 (regression: the fault suite's load test saw 'IO Error: Cannot open file')."""
    svc = env["client"]._transport.app.state.svc  # type: ignore[attr-defined]
    real_planner, calls = svc.planner, []

    def planner_then_delete(*args: Any, **kwargs: Any) -> Any:
        planned = real_planner(*args, **kwargs)
        calls.append(planned)
        if len(calls) == 1:  # the file goes away after the first plan, before it runs
            for f in (env["storage"] / "observatory_timeseries").rglob("*.parquet"):
                f.unlink()
        return planned

    svc.planner = planner_then_delete
    r = await env["client"].post(
        "/sql/read", json={"sql": "SELECT count(*) AS n FROM timestore.observatory_timeseries"}, headers=READ
    )
    assert r.status_code == 200, r.text
    assert len(calls) >= 2  # planned again after the missing file
    assert r.json()["rows"] == [{"n": 0}]
    assert any("Skipped partition" in w for w in r.json()["warnings"])


async def test_bad_sql_is_a_4xx_with_duckdbs_message(env: dict[str, Any]) -> None:
    r = await env["client"].post(
        "/sql/read", json={"sql": "SELECT no_such_column FROM timestore.observatory_timeseries"}, headers=READ
    )
    assert r.status_code == 400, r.text
    assert "no_such_column" in r.json()["message"]


async def test_schema_and_iam(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    r = await client.get("/sql/schema", headers=READ)
    tables = {t["name"]: t for t in r.json()["tables"]}
    assert list(tables) == ["timestore.observatory_timeseries"]
    assert len(tables["timestore.observatory_timeseries"]["columns"]) == 3
    for sql in [
        "SELECT * FROM timestore.secret_ds",
        "WITH s AS (SELECT * FROM timestore.secret_ds) SELECT count(*) FROM s",
        "SELECT o.site FROM timestore.observatory_timeseries o JOIN timestore.secret_ds s USING (timestamp)",
    ]:
        r = await client.post("/sql/read", json={"sql": sql}, headers=READ)
        assert (
            r.status_code == 403
            and r.json()["message"] == "Missing required scope for dataset secret_ds (or no such dataset)"
        ), sql
    r = await client.post(
        "/sql/read",
        json={"sql": "SELECT dataset_slug FROM timestore_runtime.datasets ORDER BY 1"},
        headers=READ,
    )
    assert r.json()["rows"] == [{"dataset_slug": "observatory_timeseries"}]
    r = await client.post(
        "/sql/read",
        json={"sql": "SELECT payload FROM timestore.secret_ds"},
        headers={"x-iam-scopes": "sql:read,secret:read"},
    )
    assert r.json()["rows"] == [{"payload": "classified"}]


async def test_saved_queries_crud(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    body = {"statement": "SELECT 1", "label": "  first  ", "stats": {"rowCount": 1, "elapsedMs": 5}}
    r = await client.put("/sql/saved/q1", json=body, headers=READ)
    assert r.status_code == 200, r.text
    saved = r.json()["savedQuery"]
    assert saved["id"] == "q1" and saved["statement"] == "SELECT 1" and saved["label"] == "first"
    assert saved["stats"] == {"rowCount": 1, "elapsedMs": 5} and saved["createdBy"] == "alice"
    assert saved["createdAt"].endswith("Z")
    r = await client.put(
        "/sql/saved/q1", json={"statement": "SELECT 2"}, headers={**READ, "x-iam-user": "bob"}
    )
    assert r.json()["savedQuery"]["createdBy"] == "alice" and r.json()["savedQuery"]["label"] is None
    assert (await client.get("/sql/saved/q1", headers=READ)).json()["savedQuery"]["statement"] == "SELECT 2"
    assert [q["id"] for q in (await client.get("/sql/saved", headers=READ)).json()["savedQueries"]] == ["q1"]
    assert (await client.delete("/sql/saved/q1", headers=READ)).status_code == 204
    r = await client.get("/sql/saved/q1", headers=READ)
    assert r.status_code == 404 and r.json() == {"error": "Saved query q1 not found"}
    assert (await client.delete("/sql/saved/q1", headers=READ)).status_code == 404


async def test_exec_on_postgres(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    q = {"sql": "SELECT id, label FROM sql_samples ORDER BY id"}
    r = await client.post("/sql/exec?format=table", json=q, headers=EXEC)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == "id\tlabel\n---\t-----\n1\tone\n2\ttwo\n(2 rows)\n"
    r = await client.post("/sql/exec", json=q, headers=EXEC)
    assert r.json() == [{"id": 1, "label": "one"}, {"id": 2, "label": "two"}]
    r = await client.post("/sql/exec?format=csv", json=q, headers=EXEC)
    assert r.text == "id,label\n1,one\n2,two\n"
    r = await client.post(
        "/sql/exec",
        json={"sql": "INSERT INTO sql_samples VALUES ($1, $2)", "params": [3, "three"]},
        headers=EXEC,
    )
    assert r.json() == {"command": "INSERT", "rowCount": 1} and r.headers["x-sql-request-id"].startswith(
        "sql-"
    )
    assert (
        await client.post("/sql/exec", json={"sql": "SELECT count(*) AS n FROM sql_samples"}, headers=EXEC)
    ).json() == [{"n": 3}]
    env["client"]._transport.app.state.svc.settings.exec_statement_timeout_ms = 200  # type: ignore[attr-defined]
    r = await client.post("/sql/exec", json={"sql": "SELECT pg_sleep(3)"}, headers=EXEC)
    assert r.status_code == 500 and "statement timeout" in r.json()["message"]
    r = await client.post("/sql/exec", json={"sql": "SELECT 1"}, headers=READ)
    assert r.status_code == 403 and r.json()["message"] == "Missing required SQL exec scope"
    # bad SQL is the caller's fault: 400 with PostgreSQL's message, not a 500
    r = await client.post("/sql/exec", json={"sql": "0"}, headers=EXEC)
    assert r.status_code == 400 and "syntax error" in r.json()["message"]
    r = await client.post("/sql/exec", json={"sql": "SELECT no_such_column FROM sql_samples"}, headers=EXEC)
    assert r.status_code == 400 and "no_such_column" in r.json()["message"]


async def test_manifest_endpoint(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    r = await client.get("/admin/datasets/observatory_timeseries/manifest", headers=READ)
    assert r.status_code == 200, r.text
    [m] = r.json()["manifests"]
    assert m["manifestShard"] == "2024-01-01" and m["partitionCount"] == 1
    assert [f["name"] for f in m["schemaVersion"]["fields"]] == ["timestamp", "site", "value"]
    assert m["partitions"][0]["filePath"].endswith(".parquet") and "startTime" in m["partitions"][0]
    r = await client.get("/admin/datasets/ds-observatory_timeseries/manifest?shard=2024-01-01", headers=READ)
    assert r.json()["manifest"]["id"] == "dm-observatory_timeseries"
    r = await client.get("/admin/datasets/observatory_timeseries/manifest?shard=2024-02-02", headers=READ)
    assert r.status_code == 404 and r.json() == {"error": "no published manifest for shard 2024-02-02"}
    r = await client.get("/admin/datasets/secret_ds/manifest", headers=READ)
    assert r.status_code == 403
    # an unknown dataset answers as a forbidden one to a caller who may not read everything (finding 7)
    assert (await client.get("/admin/datasets/nope/manifest", headers=READ)).status_code == 403


async def test_runtime_cache_invalidate_rebuilds(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    with psycopg.connect(env["dsn"], autocommit=True) as conn:
        conn.execute("UPDATE timestore.datasets SET name = 'renamed' WHERE id = 'ds-observatory_timeseries'")
    r = await client.post(
        "/admin/sql/runtime-cache/invalidate", json={"datasetSlug": "observatory_timeseries"}, headers=ADMIN
    )
    assert r.status_code == 202 and r.json()["scope"] == "dataset"
    for _ in range(100):
        names = {d.slug: d.name for d in env["store"].datasets()}
        if names.get("observatory_timeseries") == "renamed":
            break
        await asyncio.sleep(0.05)
    assert names["observatory_timeseries"] == "renamed"
    snap = (await client.get("/admin/sql/runtime-cache", headers=ADMIN)).json()["snapshot"]
    assert snap["datasetCount"] == 2


async def test_cancellation_frees_reader(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    long_sql = "SELECT count(*) FROM range(1000000000) a, range(1000) b"
    started = time.perf_counter()
    r = await client.post("/sql/read", json={"sql": long_sql}, headers=READ)
    assert r.status_code == 504 and time.perf_counter() - started < 8
    r = await client.post("/sql/read", json=SQL, headers=READ)
    assert r.status_code == 200


# --- the DuckDB layer alone: attacks sent straight to a store reader cursor must fail -------------

DUCKDB_ATTACKS = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "COPY (SELECT 1) TO '/tmp/walduck-escape.csv'",
    "ATTACH '/tmp/walduck-escape.duckdb' AS esc",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "SET lock_configuration = false",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
]


@pytest.mark.parametrize("sql", DUCKDB_ATTACKS)
async def test_duckdb_layer_refuses(env: dict[str, Any], sql: str) -> None:
    store: ContextStore = env["store"]
    with pytest.raises(duckdb.Error):
        with store.reader() as cur:
            cur.execute(sql).fetchall()
    assert not await asyncio.to_thread(os.path.exists, "/tmp/walduck-escape.csv")


async def test_no_existence_oracle(env: dict[str, Any]) -> None:
    """To a caller without read access an unknown dataset and a forbidden one answer alike (finding 7)."""
    client: httpx.AsyncClient = env["client"]
    for route in ("/admin/datasets/{}/manifest", "/admin/datasets/{}/manifest?shard=2024-01-01"):
        forbidden = await client.get(route.format("secret_ds"), headers=READ)
        unknown = await client.get(route.format("secret_dx"), headers=READ)
        assert forbidden.status_code == unknown.status_code == 403, (forbidden.text, unknown.text)
        assert forbidden.json() == {
            "statusCode": 403,
            "error": "Forbidden",
            "message": "Missing required scope for dataset secret_ds (or no such dataset)",
            "dataset": "secret_ds",
        }
        assert unknown.json() == {
            **forbidden.json(),
            "message": "Missing required scope for dataset secret_dx (or no such dataset)",
            "dataset": "secret_dx",
        }
    # by id too: the id of a forbidden dataset is not confirmed either
    by_id = await client.get("/admin/datasets/ds-secret_ds/manifest", headers=READ)
    assert by_id.status_code == 403 and by_id.json()["dataset"] == "ds-secret_ds"
    forbidden = await client.post(
        "/sql/read", json={"sql": "SELECT * FROM timestore.secret_ds"}, headers=READ
    )
    unknown = await client.post("/sql/read", json={"sql": "SELECT * FROM timestore.secret_dx"}, headers=READ)
    assert forbidden.status_code == unknown.status_code == 403
    assert unknown.json() == {
        **forbidden.json(),
        "message": "Missing required scope for dataset secret_dx (or no such dataset)",
        "dataset": "secret_dx",
    }
    # a caller who reads every dataset (admin) still learns that a dataset does not exist
    assert (await client.get("/admin/datasets/nope/manifest", headers=ADMIN)).status_code == 404
    assert (await client.get("/admin/datasets/secret_ds/manifest", headers=ADMIN)).status_code == 200


# --- 5xx that were the caller's fault or a warning (issue 13 finding 6) ----------------------------


async def test_nul_in_path_query_and_body_is_400(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    for method, url in [
        ("GET", "/sql/saved/%00"),
        ("DELETE", "/sql/saved/a%00b"),
        ("GET", "/admin/datasets/%00/manifest"),
        ("GET", "/admin/datasets/observatory_timeseries/manifest?shard=%00"),
    ]:
        r = await client.request(method, url, headers=READ)
        assert r.status_code == 400, (url, r.status_code, r.text)
        assert "NUL" in r.json()["message"]
    r = await client.put("/sql/saved/%00", json={"statement": "SELECT 1"}, headers=READ)
    assert r.status_code == 400, r.text
    r = await client.put("/sql/saved/q1", json={"statement": "SELECT '\u0000'"}, headers=READ)
    assert r.status_code == 400 and "NUL" in r.json()["message"], r.text
    r = await client.post("/sql/exec", json={"sql": "SELECT '\u0000'"}, headers=EXEC)
    assert r.status_code == 400 and "NUL" in r.json()["message"], r.text
    r = await client.post("/sql/exec", json={"sql": "SELECT $1::text", "params": ["a\u0000b"]}, headers=EXEC)
    assert r.status_code == 400 and "NUL" in r.json()["message"], r.text
    r = await client.post("/sql/read", json={"sql": "SELECT '\u0000' AS x"}, headers=READ)
    assert r.status_code < 500, r.text


async def test_exec_params_objects_and_arrays_bound_as_json(env: dict[str, Any]) -> None:
    client: httpx.AsyncClient = env["client"]
    r = await client.post(
        "/sql/exec", json={"sql": "SELECT $1::jsonb ->> 'a' AS a", "params": [{"a": "x"}]}, headers=EXEC
    )
    assert r.status_code == 200 and r.json() == [{"a": "x"}], r.text
    r = await client.post(
        "/sql/exec",
        json={"sql": "SELECT jsonb_array_length($1::jsonb) AS n", "params": [[{"a": 1}, [2]]]},
        headers=EXEC,
    )
    assert r.status_code == 200 and r.json() == [{"n": 2}], r.text
    # a flat list of one scalar type stays a PostgreSQL array (node-postgres does the same)
    r = await client.post(
        "/sql/exec", json={"sql": "SELECT $1::int[] AS a", "params": [[1, 2]]}, headers=EXEC
    )
    assert r.status_code == 200 and r.json() == [{"a": [1, 2]}], r.text
    # mixed scalars cannot be an array: bound as JSON too, never a 500
    r = await client.post(
        "/sql/exec", json={"sql": "SELECT $1::jsonb AS a", "params": [[1, "a", None]]}, headers=EXEC
    )
    assert r.status_code == 200 and r.json() == [{"a": [1, "a", None]}], r.text
    r = await client.post("/sql/exec", json={"sql": "SELECT $1 AS a", "params": [{"a": 1}]}, headers=EXEC)
    assert r.status_code < 500, r.text


async def test_duckdb_memory_and_temp_space_exhausted_is_503(fresh_db: Any, tmp_path: Path) -> None:
    """DuckDB's memory_limit / max_temp_directory_size reached: 503 + Retry-After, not 500; the reader
    is usable again afterwards; both settings reach DuckDB."""
    from walduck.metrics import QUERY_LIMITS

    temp = tmp_path / "spill"
    async with serve_env(
        fresh_db,
        tmp_path,
        duckdb_memory_limit="64MB",
        duckdb_threads=1,
        duckdb_temp_directory=str(temp),
        duckdb_max_temp_directory_size="1MB",
    ) as e:
        client: httpx.AsyncClient = e["client"]
        with e["store"].reader() as cur:
            settings = cur.execute(
                "SELECT current_setting('temp_directory'), current_setting('max_temp_directory_size')"
            ).fetchone()
        assert settings == (str(temp), "976.5 KiB")
        before = QUERY_LIMITS.labels(limit="temp_space")._value.get()
        sql = "SELECT i, repeat('x', 100) || i AS s FROM range(2000000) t(i) ORDER BY s DESC"
        r = await client.post("/sql/read", json={"sql": sql}, headers=READ)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "max_temp_directory_size" in r.json()["message"] and "\n" not in r.json()["message"]
        assert QUERY_LIMITS.labels(limit="temp_space")._value.get() == before + 1
        r = await client.post("/sql/read", json=SQL, headers=READ)
        assert r.status_code == 200 and len(r.json()["rows"]) == 2


def _add_partition(dsn: str, pid: str, file_path: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, manifest_shard, partition_key,"
            " storage_target_id, file_format, file_path, file_size_bytes, row_count, start_time, end_time,"
            " metadata) VALUES (%s, 'ds-observatory_timeseries', 'dm-observatory_timeseries', '2024-01-01',"
            " %s, 'st-timestore-default-local', 'parquet', %s, 100, 1, %s, %s, %s)",
            [
                pid,
                Jsonb({"window": "2024-01-01"}),
                file_path,
                T0,
                datetime(2024, 1, 1, 1, tzinfo=UTC),
                Jsonb({"tableName": "records"}),
            ],
        )


async def test_partition_outside_storage_root_is_skipped_with_a_warning(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """A catalog file_path outside the storage root, or resolving through a symlink outside it, was a
    Permission Error for the whole dataset: now that partition is skipped with a warning and counted."""
    from walduck.metrics import PARTITIONS_OUTSIDE_ROOT

    storage: Path = env["storage"]
    outside = tmp_path / "outside"
    outside.mkdir()
    leaked = pa.table(
        {
            "timestamp": pa.array([datetime(2024, 1, 1, 0, 30)], pa.timestamp("us")),
            "site": ["leak"],
            "value": [1.0],
        }
    )
    pq.write_table(leaked, outside / "f.parquet")
    day = storage / "observatory_timeseries" / "window=2024-01-01"
    (day / "link.parquet").symlink_to(outside / "f.parquet")
    (storage / "linked").symlink_to(outside, target_is_directory=True)
    cases = {
        "part-dotdot": "../outside/f.parquet",
        "part-absolute": str(outside / "f.parquet"),
        "part-file-link": "observatory_timeseries/window=2024-01-01/link.parquet",
        "part-dir-link": "linked/f.parquet",
    }
    for pid, fp in cases.items():
        _add_partition(env["dsn"], pid, fp)
    env["store"].rebuild(None, "test")
    before = PARTITIONS_OUTSIDE_ROOT._value.get()
    r = await env["client"].post(
        "/sql/read",
        json={"sql": "SELECT site FROM timestore.observatory_timeseries ORDER BY site"},
        headers=READ,
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [{"site": "alpha"}, {"site": "beta"}]  # the dataset still answers, no leak
    warnings = r.json()["warnings"]
    for pid in cases:
        assert any(pid in w and "outside the storage root" in w for w in warnings), (pid, warnings)
    assert PARTITIONS_OUTSIDE_ROOT._value.get() == before + len(cases)
    # a symlink that stays inside the root is an ordinary partition
    (storage / "inside").symlink_to(day, target_is_directory=True)
    _add_partition(env["dsn"], "part-inside-link", "inside/part-observatory_timeseries.parquet")
    env["store"].rebuild(None, "test")
    r = await env["client"].post(
        "/sql/read", json={"sql": "SELECT count(*) AS n FROM timestore.observatory_timeseries"}, headers=READ
    )
    assert r.json()["rows"] == [{"n": 4}], r.text
