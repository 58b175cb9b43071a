"""Planner rewrite and time-predicate extraction against a stub store (pure logic, no DuckDB)."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlglot

from sinks.context.planner import (
    AmbiguousRelation,
    ForbiddenDataset,
    ForbiddenFunction,
    UnknownRelation,
    UnsupportedStatement,
    extract_time_bounds,
    plan,
)
from sinks.context.store import DatasetView


def _view(did: str, slug: str, view: str | None = None) -> DatasetView:
    return DatasetView(
        id=did,
        slug=slug,
        name=slug,
        description=None,
        status="active",
        metadata={},
        view_name=view or slug,
        columns=[("ts", "TIMESTAMP"), ("v", "DOUBLE")],
        timestamp_column="ts",
        partition_keys=[],
        partition_count=0,
        total_rows=0,
        total_bytes=0,
        updated_at=None,
        alias_warning=None
        if view is None
        else f"Dataset {slug} exposed as view {view} to comply with identifier rules.",
    )


class StubStore:
    def __init__(self, views: list[DatasetView]) -> None:
        self.views = views
        self.calls: list[tuple[str, datetime | None, datetime | None]] = []

    def datasets(self) -> list[DatasetView]:
        return self.views

    def resolve_relation(self, name: str) -> list[DatasetView]:
        return [v for v in self.views if v.slug == name] + [
            v for v in self.views if v.view_name == name and v.slug != name
        ]

    def relation_sql(self, did, start=None, end=None, *, bind=None):
        self.calls.append((did, start, end))
        return f"SELECT * FROM rel_{did.replace('-', '_')}", []


def bounds(sql: str, column: str = "ts", quals: frozenset[str] = frozenset({"t"})):
    where = sqlglot.parse_one(sql, read="duckdb").args.get("where")
    b = extract_time_bounds(where, column, set(quals))
    return b.start, b.end


D = datetime


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1 FROM x t WHERE ts >= '2024-01-01' AND ts < '2024-01-02'", (D(2024, 1, 1), D(2024, 1, 2))),
        ("SELECT 1 FROM x t WHERE t.ts > TIMESTAMP '2024-01-01 10:00:00'", (D(2024, 1, 1, 10), None)),
        ("SELECT 1 FROM x t WHERE '2024-02-01' > ts", (None, D(2024, 2, 1))),
        (
            "SELECT 1 FROM x t WHERE ts BETWEEN '2024-01-01' AND DATE '2024-01-03'",
            (D(2024, 1, 1), D(2024, 1, 3)),
        ),
        ("SELECT 1 FROM x t WHERE ts = '2024-01-05T00:00:00'", (D(2024, 1, 5), D(2024, 1, 5))),
        (
            "SELECT 1 FROM x t WHERE ts >= '2024-01-01' AND ts >= '2024-01-03' AND v > 3",
            (D(2024, 1, 3), None),
        ),
        # an offset widens the bound by a day (the column compares in the session time zone)
        ("SELECT 1 FROM x t WHERE ts >= '2024-01-10T00:00:00+02:00'", (D(2024, 1, 8, 22), None)),
        # not prunable: OR, other columns, other tables, non-literals, unparseable text
        ("SELECT 1 FROM x t WHERE ts >= '2024-01-01' OR v > 1", (None, None)),
        ("SELECT 1 FROM x t WHERE other >= '2024-01-01'", (None, None)),
        ("SELECT 1 FROM x t WHERE u.ts >= '2024-01-01'", (None, None)),
        ("SELECT 1 FROM x t WHERE ts >= now() - INTERVAL 1 DAY", (None, None)),
        ("SELECT 1 FROM x t WHERE ts >= 'yesterday'", (None, None)),
        ("SELECT 1 FROM x t WHERE NOT (ts >= '2024-01-01')", (None, None)),
    ],
)
def test_extract_time_bounds(sql, expected):
    assert bounds(sql) == expected


def test_rewrites_every_reference_with_its_own_bounds():
    store = StubStore([_view("ds-a", "a"), _view("ds-b", "b")])
    q = sqlglot.parse_one(
        """WITH recent AS (SELECT * FROM timestore.a WHERE ts >= '2024-03-01')
           SELECT r.v, x.v FROM recent r
           JOIN timestore.b AS x ON x.v = r.v
           WHERE x.ts < '2024-04-01' AND r.v IN (SELECT v FROM timestore.a WHERE ts = '2024-03-05')""",
        read="duckdb",
    )
    planned = plan(q, store, {"ds-a", "ds-b"})
    assert sorted(planned.dataset_ids) == ["ds-a", "ds-b"]
    assert "timestore." not in planned.sql
    assert "(SELECT * FROM rel_ds_a) AS a" in planned.sql
    assert "(SELECT * FROM rel_ds_b) AS x" in planned.sql
    assert sorted(store.calls, key=str) == sorted(
        [
            ("ds-a", D(2024, 3, 1), None),
            ("ds-b", None, D(2024, 4, 1)),
            ("ds-a", D(2024, 3, 5), D(2024, 3, 5)),
        ],
        key=str,
    )


def test_qualified_columns_and_alias_warning():
    store = StubStore([_view("ds-1", "my-data", "my_data")])
    planned = plan(
        sqlglot.parse_one("SELECT timestore.my_data.v FROM timestore.my_data", read="duckdb"), store, {"ds-1"}
    )
    assert planned.sql.startswith("SELECT my_data.v FROM (SELECT * FROM rel_ds_1) AS my_data")
    assert planned.warnings == ["Dataset my-data exposed as view my_data to comply with identifier rules."]


def test_runtime_tables_filtered_to_allowed():
    store = StubStore([_view("ds-a", "a"), _view("ds-b", "b")])
    planned = plan(
        sqlglot.parse_one("SELECT * FROM timestore_runtime.partitions", read="duckdb"), store, {"ds-b"}
    )
    # the filter is a parameter of the planner's, after the client's
    assert "list_contains($1::VARCHAR[], dataset_slug)" in planned.sql
    assert planned.params == [["b"]] and planned.runtime_params == {1: "partitions"}
    planned = plan(
        sqlglot.parse_one("SELECT * FROM timestore_runtime.datasets d", read="duckdb"), store, {"ds-a"}
    )
    assert planned.params == [["ds-a"]] and planned.sql.endswith("AS d")


def test_errors():
    store = StubStore([_view("ds-a", "a"), _view("ds-1", "x-y", "x_y"), _view("ds-2", "x.y", "x_y")])
    with pytest.raises(UnknownRelation):
        plan(sqlglot.parse_one("SELECT * FROM timestore.nope"), store, {"ds-a"})
    with pytest.raises(UnknownRelation):
        plan(sqlglot.parse_one("SELECT * FROM wd.partitions"), store, {"ds-a"})
    with pytest.raises(UnknownRelation):
        plan(sqlglot.parse_one("SELECT * FROM 'x.parquet'", read="duckdb"), store, {"ds-a"})
    with pytest.raises(ForbiddenDataset) as err:
        plan(sqlglot.parse_one("SELECT * FROM timestore.a"), store, {"ds-1"})
    assert err.value.slug == "a"
    with pytest.raises(ForbiddenFunction):
        plan(sqlglot.parse_one("SELECT * FROM read_parquet('/x/*.parquet')", read="duckdb"), store, {"ds-a"})
    with pytest.raises(ForbiddenFunction):
        plan(sqlglot.parse_one("SELECT * FROM read_csv('/etc/passwd')", read="duckdb"), store, {"ds-a"})
    with pytest.raises(AmbiguousRelation):
        plan(sqlglot.parse_one("SELECT * FROM timestore.x_y"), store, {"ds-1", "ds-2"})
    # only one of the colliding datasets is allowed: that one is meant
    assert plan(sqlglot.parse_one("SELECT * FROM timestore.x_y"), store, {"ds-2"}).dataset_ids == ["ds-2"]
    with pytest.raises(UnsupportedStatement):
        plan(sqlglot.parse_one("DELETE FROM timestore.a"), store, {"ds-a"})
    # CTE names and range() are fine
    assert plan(
        sqlglot.parse_one("WITH q AS (SELECT 1 AS c) SELECT * FROM q, range(3)", read="duckdb"), store, set()
    )
