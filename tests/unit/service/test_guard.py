"""The execution guard alone: planted planner bugs (statements a broken policy or planner could emit) are caught
on DuckDB's own parse of the executed statement; the real planner's output passes."""

from __future__ import annotations

import pytest
import sqlglot
from service_fake_store import FakeStore

from sinks.context import guard
from sinks.context.planner import PlannedQuery, plan

PREFIX = "__wd_0123456789ab_"
OBS = {"ds-obs"}


@pytest.fixture(scope="module")
def store() -> FakeStore:
    return FakeStore()


def planned(sql: str, params: list | None = None, **kw) -> PlannedQuery:
    return PlannedQuery(sql=sql, dataset_ids=[], params=params or [], cte_prefix=PREFIX, **kw)


def test_real_plans_pass(store: FakeStore) -> None:
    for sql in (
        "SELECT * FROM timestore.observatory",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r, range(2)",
        "SELECT * FROM timestore_runtime.datasets d JOIN timestore_runtime.partitions p USING (dataset_slug)",
        "SELECT (SELECT count(*) FROM timestore.observatory) AS n, unnest([1, 2]) AS u",
        "SELECT * FROM (VALUES (1), (2)) v(a) ORDER BY a DESC LIMIT 1 OFFSET 0",
    ):
        p = plan(sqlglot.parse_one(sql, read="duckdb"), store, OBS)
        guard.verify(store, p, OBS)


def test_planted_bugs_are_caught(store: FakeStore) -> None:
    secret, obs = store.files["ds-sec"], store.files["ds-obs"]
    planted = {
        "file path as a name": planned(f'SELECT * FROM "{secret}"'),
        "file path via a CTE of the client's name": planned(
            f'WITH RECURSIVE "{secret}" AS (SELECT * FROM "{secret}") SELECT * FROM "{secret}"'
        ),
        "catalog view": planned("SELECT * FROM duckdb_views"),
        "qualified catalog view": planned("SELECT * FROM pg_catalog.pg_views"),
        "catalog table function": planned("SELECT * FROM duckdb_settings()"),
        "show reference": planned("SELECT * FROM (SHOW TABLES)"),
        "literal file list": planned(f"SELECT * FROM read_parquet(['{obs}'])"),
        "other reader": planned(f"SELECT * FROM read_csv('{obs}')"),
        "denied scalar": planned("SELECT getenv('HOME')"),
        "schema-qualified function": planned("SELECT main.my_macro(1)"),
        "files of a forbidden dataset": planned(
            "SELECT * FROM read_parquet($1)", [[secret]], file_params={1: "ds-sec"}
        ),
        "forbidden file under an allowed dataset": planned(
            "SELECT * FROM read_parquet($1)", [[obs, secret]], file_params={1: "ds-obs"}
        ),
        "unfiltered runtime table": planned("SELECT * FROM timestore_runtime.datasets"),
        "runtime filter naming a forbidden dataset": planned(
            "SELECT * FROM timestore_runtime.datasets WHERE list_contains($1::VARCHAR[], dataset_id)",
            [["ds-obs", "ds-sec"]],
            runtime_params={1: "datasets"},
        ),
        "runtime filter widened": planned(
            "SELECT * FROM timestore_runtime.datasets WHERE list_contains($1::VARCHAR[], dataset_id) OR true",
            [["ds-obs"]],
            runtime_params={1: "datasets"},
        ),
        "planner parameter reused by the client": planned(
            "SELECT $1 AS files, * FROM read_parquet($1)", [[obs]], file_params={1: "ds-obs"}
        ),
        "read_parquet option": planned(
            "SELECT * FROM read_parquet($1, filename = true)", [[obs]], file_params={1: "ds-obs"}
        ),
        "cte name not the planner's": planned("WITH x AS (SELECT 1) SELECT * FROM x"),
        "two statements": planned("SELECT 1; SELECT 2"),
    }
    missed = []
    for name, p in planted.items():
        try:
            guard.verify(store, p, OBS)
        except guard.GuardViolation:
            continue
        missed.append(name)
    assert not missed, f"the guard passed planted bugs: {missed}"


def test_file_deleted_since_planning_asks_for_a_new_plan(store: FakeStore) -> None:
    p = planned("SELECT * FROM read_parquet($1)", [[store.dir + "/gone.parquet"]], file_params={1: "ds-obs"})
    with pytest.raises(guard.FilesNotListed):
        guard.verify(store, p, OBS)
