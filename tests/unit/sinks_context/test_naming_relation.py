"""View-name sanitising (Timestore's view-name sanitising), type mapping, timestamp column rule, null-fill SQL."""

from __future__ import annotations

import duckdb
import pytest

from sinks.context.naming import alias_warning, duckdb_type, sanitize_view_name, timestamp_column
from sinks.context.relation import FileGroup, empty_relation_sql, relation_sql
from walduck.locations import partition_location


@pytest.mark.parametrize(
    ("slug", "view"),
    [
        ("observatory", "observatory"),
        ("  obs.minute-bars  ", "obs_minute_bars"),
        ("a--b__c", "a_b_c"),
        ("__x__", "x"),
        ("---", "dataset"),
        ("", "dataset"),
        ("2024-data", "d_2024_data"),
        ("MixedCase", "MixedCase"),
        ("é-ü", "dataset"),
    ],
)
def test_sanitize_view_name(slug, view):
    assert sanitize_view_name(slug) == view


def test_alias_warning():
    assert alias_warning("obs", "obs") is None
    assert alias_warning("a-b", "a_b") == "Dataset a-b exposed as view a_b to comply with identifier rules."


def test_type_mapping_and_timestamp_rule():
    assert [duckdb_type(t) for t in ["timestamp", "float", "int", "bool", "string", None]] == [
        "TIMESTAMP",
        "DOUBLE",
        "BIGINT",
        "BOOLEAN",
        "VARCHAR",
        "VARCHAR",
    ]
    cols = [("a", "VARCHAR"), ("t1", "TIMESTAMP"), ("timestamp", "VARCHAR")]
    assert timestamp_column({"defaultTimestampColumn": "a"}, cols) == "a"
    assert timestamp_column({"defaultTimestampColumn": "zz"}, cols) == "t1"
    assert timestamp_column({}, [("a", "VARCHAR"), ("timestamp", "VARCHAR")]) == "timestamp"
    assert timestamp_column({}, [("a", "VARCHAR")]) == "a"
    assert timestamp_column({}, []) == "timestamp"


def test_null_fill_sql_groups_by_schema_version():
    cols = [("ts", "TIMESTAMP"), ("v", "DOUBLE"), ("site", "VARCHAR")]
    sql = relation_sql(
        cols,
        [
            FileGroup({"ts": "TIMESTAMP", "v": "BIGINT"}, ["/d/a.parquet", "/d/b'q.parquet"]),
            FileGroup(dict(cols), ["/d/c.parquet"]),
        ],
    )
    assert sql == (
        'SELECT "ts", CAST("v" AS DOUBLE) AS "v", CAST(NULL AS VARCHAR) AS "site" '
        "FROM read_parquet(['/d/a.parquet', '/d/b''q.parquet'], hive_partitioning = false) "
        'UNION ALL SELECT "ts", "v", "site" FROM read_parquet([\'/d/c.parquet\'], hive_partitioning = false)'
    )


def test_column_named_like_a_path_key_reads_the_file(tmp_path):
    """Timestore writes partition keys as ``key=value`` path segments; a schema column with a key's name
    must come from the file, not from DuckDB's hive auto-detection (which would return the path's DATE)."""
    path = tmp_path / "obs" / "dataset=obs" / "window=2024-01-01" / "p-1.parquet"
    path.parent.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"COPY (SELECT 7 AS \"window\", 1.5::DOUBLE AS v) TO '{path}' (FORMAT parquet)")
    cols = [("window", "INTEGER"), ("v", "DOUBLE")]
    sql = relation_sql(cols, [FileGroup(dict(cols), [str(path)])])
    assert con.execute(f'SELECT "window", v FROM ({sql})').fetchall() == [(7, 1.5)]
    # what a scan with hive auto-detection returns for the same file (the value this guards against)
    auto = con.execute(f"SELECT \"window\" FROM read_parquet(['{path}'])").fetchone()[0]
    assert str(auto) == "2024-01-01"


def test_empty_relation_is_typed():
    cols = [("ts", "TIMESTAMP"), ("v", "DOUBLE")]
    assert relation_sql(cols, [FileGroup(None, [])]) == empty_relation_sql(cols)
    con = duckdb.connect()
    rel = con.sql(empty_relation_sql(cols))
    assert rel.columns == ["ts", "v"] and [str(t) for t in rel.types] == ["TIMESTAMP", "DOUBLE"]
    assert con.execute(f"SELECT count(*) FROM ({empty_relation_sql([])})").fetchone() == (0,)


def test_partition_location():
    assert partition_location(None, "obs/p.parquet", "/root") == "/root/obs/p.parquet"
    assert (
        partition_location({"kind": "local", "config": {"root": "/other"}}, "x.parquet", "/root")
        == "/other/x.parquet"
    )
    assert (
        partition_location({"kind": "s3", "config": {"bucket": "b"}}, "x.parquet", "/root")
        == "s3://b/x.parquet"
    )
    assert (
        partition_location({"kind": "gcs", "config": {"bucket": "g"}}, "x.parquet", "/r")
        == "gs://g/x.parquet"
    )
