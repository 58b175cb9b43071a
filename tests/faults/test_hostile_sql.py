"""Scenario 5: hostile SQL. Attack queries answer 4xx (never 200, never 5xx); a caller without a dataset's read
scope cannot reach its rows through CTEs, subqueries, joins or ``timestore_runtime``; and schemathesis fuzzes
the OpenAPI schema (bounded examples): no 5xx, no hang."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from sinks.context.naming import sanitize_view_name
from stack.local import Stack
from support.hostile_sql import BINDS_TO_A_CTE, CATALOG_RELATIONS, bypass_shapes
from support.stacks import run_workload

ADMIN = "timestore:admin"
SQL_ONLY = "timestore:sql:read"  # SQL read, but not the datasets' read scope (timestore:read)

ATTACKS: dict[str, str] = {
    "read_csv_passwd": "SELECT * FROM read_csv('/etc/passwd')",
    "read_csv_auto_passwd": "SELECT * FROM read_csv_auto('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/hostname')",
    "read_blob": "SELECT * FROM read_blob('/etc/hostname')",
    "read_parquet_outside": "SELECT * FROM read_parquet('/tmp/../etc/x.parquet')",
    "read_parquet_glob": "SELECT * FROM read_parquet('/**/*.parquet')",
    "read_json_url": "SELECT * FROM read_json('http://127.0.0.1:9/x.json')",
    "parquet_url": "SELECT * FROM 'https://example.com/x.parquet'",
    "bare_file_path": "SELECT * FROM '/etc/passwd'",
    "attach": "ATTACH '/tmp/evil.duckdb' AS evil",
    "attach_in_cte": "WITH x AS (SELECT 1) SELECT * FROM x; ATTACH '/tmp/evil.duckdb'",
    "copy_to": "COPY (SELECT 1) TO '/tmp/walduck-evil.csv'",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET enable_external_access = true",
    "reset": "RESET enable_external_access",
    "pragma": "PRAGMA database_list",
    "call_pragma": "CALL pragma_database_list()",
    "multi": "SELECT 1; SELECT 2",
    "multi_comment": "SELECT 1 /* ; */; DROP VIEW timestore.x",
    "comment_prefix": "-- harmless\nCOPY (SELECT 1) TO '/tmp/walduck-evil2.csv'",
    "block_comment_prefix": "/* SELECT */ INSTALL httpfs",
    "create_table": "CREATE TABLE t AS SELECT 1",
    "drop_view": "DROP VIEW timestore_runtime.datasets",
    "insert": "INSERT INTO timestore_runtime.datasets VALUES (1)",
    "export": "EXPORT DATABASE '/tmp/walduck-export'",
    "duckdb_settings": "SELECT * FROM duckdb_settings()",
    "getenv": "SELECT getenv('HOME')",
    "glob": "SELECT * FROM glob('/etc/*')",
    "internal_schema": "SELECT * FROM wd.partitions",
    "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
}


@pytest.fixture
async def hostile_stack(make_stack) -> Stack:
    stack: Stack = await make_stack()
    run_workload(
        stack, 5, datasets=2, days=2, partitions_per_shard=4, duration=30, max_commits=8, mix={"ingest": 1}
    )
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    await asyncio.to_thread(stack.wait_caught_up, None, 120)
    return stack


def _views(stack: Stack) -> list[str]:
    resp = stack.read("SELECT dataset_slug FROM timestore_runtime.datasets ORDER BY 1", scopes=ADMIN)
    assert resp.status_code == 200, resp.text
    return [sanitize_view_name(r["dataset_slug"]) for r in resp.json()["rows"]]


async def test_attack_queries_are_refused_4xx(hostile_stack: Stack) -> None:
    results = {}
    for name, sql in ATTACKS.items():
        resp = await asyncio.to_thread(hostile_stack.read, sql, scopes=ADMIN)
        results[name] = resp.status_code
    print(f"[faults] hostile attacks={len(ATTACKS)} statuses={results}")
    bad = {k: v for k, v in results.items() if not 400 <= v < 500}
    assert not bad, f"attack queries not refused with 4xx: {bad}"
    assert hostile_stack.components["query"].alive


async def test_cross_dataset_reads_without_scope_are_refused(hostile_stack: Stack) -> None:
    views = await asyncio.to_thread(_views, hostile_stack)
    assert len(views) >= 2
    a, b = views[0], views[1]
    sneaky = {
        "direct": f'SELECT count(*) FROM timestore."{a}"',
        "cte": f'WITH x AS (SELECT * FROM timestore."{a}") SELECT count(*) FROM x',
        "subquery": f'SELECT (SELECT count(*) FROM timestore."{a}") AS n',
        "join": f'SELECT count(*) FROM timestore."{a}" x JOIN timestore."{b}" y ON true',
        "union": f'SELECT 1 AS v UNION ALL SELECT value FROM timestore."{b}"',
        "exists": f'SELECT 1 WHERE EXISTS (SELECT 1 FROM timestore."{a}")',
        "lower_case": f'SELECT count(*) FROM TIMESTORE."{a.upper()}"',
        "unqualified_in_cte": f'WITH timestore AS (SELECT 1) SELECT count(*) FROM timestore."{a}"',
    }
    statuses = {}
    for name, sql in sneaky.items():
        resp = await asyncio.to_thread(hostile_stack.read, sql, scopes=SQL_ONLY)
        statuses[name] = resp.status_code
        assert 400 <= resp.status_code < 500, f"{name}: {resp.status_code} {resp.text[:300]}"
    # timestore_runtime: no rows (and no slugs) of datasets the caller may not read
    for table in ("datasets", "partitions", "columns"):
        resp = await asyncio.to_thread(
            hostile_stack.read, f"SELECT * FROM timestore_runtime.{table}", scopes=SQL_ONLY
        )
        assert resp.status_code == 200 or 400 <= resp.status_code < 500, resp.text[:300]
        if resp.status_code == 200:
            assert resp.json()["rows"] == [], f"timestore_runtime.{table} leaks: {resp.text[:300]}"
    print(f"[faults] cross-dataset attempts={len(sneaky)} statuses={statuses}")


def _locations(stack: Stack) -> list[str]:
    resp = stack.read("SELECT location FROM timestore_runtime.partitions ORDER BY 1", scopes=ADMIN)
    assert resp.status_code == 200, resp.text
    return [r["location"] for r in resp.json()["rows"]]


async def test_cte_bypass_shapes_are_refused(hostile_stack: Stack) -> None:
    """No dataset file, glob over the storage root or system catalog object is reachable by naming a CTE after it
    (issue 13 finding 1), and the audit never records such a read as a success."""
    locations = await asyncio.to_thread(_locations, hostile_stack)
    assert locations
    root = str(hostile_stack.settings.storage_root).rstrip("/")
    targets = [
        f'"{locations[0]}"',
        f'"{root}/**/*.parquet"',
        f'"{locations[0].rsplit("/", 1)[0]}/*.parquet"',
        *(name if "." in name else f'"{name}"' for name in CATALOG_RELATIONS),
    ]
    statuses: dict[str, int] = {}
    for target in targets:
        for shape, sql in bypass_shapes(target).items():
            if shape in BINDS_TO_A_CTE:
                continue  # answers the CTE's own row (the unit suite pins that)
            for scopes in (SQL_ONLY, ""):
                resp = await asyncio.to_thread(hostile_stack.read, sql, scopes=scopes)
                statuses[f"{shape}:{target[-30:]}:{scopes or '-'}"] = resp.status_code
                assert 400 <= resp.status_code < 500, (
                    f"{shape} {target}: {resp.status_code} {resp.text[:300]}"
                )
                leaked = [loc for loc in locations if loc in resp.text and loc not in sql]
                assert not leaked, f"{shape} {target}: answer names files {leaked[:3]}"
    print(f"[faults] cte bypass attempts={len(statuses)} all 4xx")


def test_schemathesis_fuzz_no_5xx(hostile_stack: Stack) -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{hostile_stack.base_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--request-timeout",
            "20",
            "--seed",
            "42",
            "-H",
            f"x-iam-scopes: {ADMIN},timestore:sql:read,timestore:read",
            # /sql/exec runs any statement on the PostgreSQL catalog (Timestore parity): a fuzzer must not run
            # DDL/DML there, and it answers PostgreSQL errors with 500 by design (see docs/reliability.md)
            "--exclude-path",
            "/sql/exec",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    tail = (done.stdout + done.stderr)[-3000:]
    print(f"[faults] schemathesis rc={done.returncode}\n{tail}")
    assert done.returncode == 0, tail
    assert hostile_stack.components["query"].alive
