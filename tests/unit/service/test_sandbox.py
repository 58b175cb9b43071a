"""The /sql/read sandbox: each attack is rejected by the policy alone (no DuckDB involved)."""

from __future__ import annotations

import pytest

from sinks.service.sandbox import NOT_SINGLE_SELECT, PolicyViolation, check_read_sql, is_select_only

ATTACKS = [
    # more than one statement / not a SELECT
    "SELECT 1; SELECT 2",
    "SELECT 1; DROP TABLE x",
    "DELETE FROM timestore.observatory",
    "INSERT INTO timestore.observatory VALUES (1)",
    "UPDATE timestore.observatory SET value = 1",
    "CREATE TABLE t AS SELECT 1",
    "DROP VIEW timestore.observatory",
    "ATTACH '/tmp/x.db' AS x",
    "DETACH x",
    "COPY (SELECT 1) TO '/tmp/out.csv'",
    "EXPORT DATABASE '/tmp/dump'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA database_list",
    "CALL duckdb_settings()",
    "DESCRIBE timestore.observatory",
    "SUMMARIZE timestore.observatory",
    "CHECKPOINT",
    "USE memory",
    "BEGIN TRANSACTION",
    # file and URL readers in every position
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_parquet('/data/storage/other/part-1.parquet')",
    "SELECT * FROM parquet_scan('x.parquet')",
    "SELECT * FROM read_json('http://example.com/x.json')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM parquet_metadata('x.parquet')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM query_table('wd.partitions')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 's3://bucket/x.parquet'",
    'SELECT * FROM "/etc/passwd"',
    "SELECT * FROM timestore.observatory, LATERAL read_csv('/etc/passwd')",
    "SELECT (SELECT count(*) FROM read_csv('/etc/passwd'))",
    "SELECT * FROM timestore.observatory WHERE site IN (SELECT * FROM read_csv('/etc/passwd'))",
    "WITH x AS (SELECT * FROM read_parquet('/etc/x')) SELECT * FROM x",
    "SELECT 1 UNION ALL SELECT * FROM read_csv('/etc/passwd')",
    # relations outside the allow-list
    "SELECT * FROM wd.partitions",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM memory.timestore.observatory",
    "SELECT * FROM pg_catalog.pg_tables",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM some_table",
    # scalar functions that leak configuration or environment
    "SELECT getenv('HOME')",
    "SELECT current_setting('allowed_directories')",
    "SELECT * FROM timestore.observatory WHERE site = getvariable('x')",
    "SELECT json_execute_serialized_sql('x')",
    # CTE scoping tricks: a CTE name used where it is not in scope resolves to a file
    "SELECT * FROM (WITH f AS (SELECT 1) SELECT 1), f",
    "WITH a AS (SELECT * FROM a) SELECT * FROM a",
    # comment tricks
    "SELECT 1 /* ; */ ; DROP TABLE x",
    "/* SELECT */ DELETE FROM x",
    "-- SELECT\nDELETE FROM x",
    "SELECT 1 -- \n; ATTACH 'x'",
    "WITH x AS (SELECT 1) DELETE FROM y",
    "SELECT * INTO t FROM timestore.observatory",
]

GOOD = [
    ("SELECT site, value FROM timestore.observatory ORDER BY site", {"observatory"}),
    ("select * from timestore.OBSERVATORY", {"observatory"}),
    ('SELECT * FROM timestore."observatory"', {"observatory"}),
    ("FROM timestore.observatory", {"observatory"}),
    ("WITH a AS (SELECT * FROM timestore.observatory) SELECT count(*) FROM a", {"observatory"}),
    ("WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a) SELECT * FROM b", set()),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", set()),
    ("SELECT * FROM timestore.a JOIN timestore.b USING (site)", {"a", "b"}),
    ("SELECT 1 UNION ALL SELECT 2", set()),
    ("(SELECT 1)", set()),
    ("SELECT * FROM range(10)", set()),
    ("SELECT * FROM generate_series(1, 3)", set()),
    ("SELECT * FROM unnest([1, 2])", set()),
    ("SELECT * FROM (VALUES (1), (2)) v(a)", set()),
    ("SELECT * FROM timestore_runtime.datasets", set()),
    ("SELECT ?, $1", set()),
    ("-- leading comment\nSELECT 1", set()),
    ("SELECT 1;", set()),
    ("SELECT 'read_csv(''/etc/passwd'')' AS s", set()),
]


@pytest.mark.parametrize("sql", ATTACKS)
def test_attacks_rejected(sql: str) -> None:
    with pytest.raises(PolicyViolation):
        check_read_sql(sql)


@pytest.mark.parametrize(("sql", "views"), GOOD)
def test_good_queries_allowed(sql: str, views: set[str]) -> None:
    checked = check_read_sql(sql)
    assert checked.views == views


def test_non_select_message_is_timestores() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_read_sql("SELECT 1; SELECT 2")
    assert (
        info.value.message == NOT_SINGLE_SELECT == "Only single SELECT statements are permitted on /sql/read"
    )


def test_runtime_tables_collected() -> None:
    assert check_read_sql("SELECT * FROM timestore_runtime.partitions").runtime_tables == {"partitions"}


@pytest.mark.parametrize(
    ("sql", "ok"),
    [
        ("SELECT 1", True),
        ("  /* c */ -- x\n select 1", True),
        ("WITH a AS (SELECT 1) SELECT * FROM a", True),
        ("WITH a AS (VALUES (1)) TABLE a", False),
        ("DELETE FROM x", False),
        ("SELECT 1; SELECT 2", False),
        ("SELECT ';' AS semi", True),
        ("SELECT 1; -- trailing", False),
        ("SELECT 1;  ", True),
        ("", False),
    ],
)
def test_timestore_textual_check(sql: str, ok: bool) -> None:
    assert is_select_only(sql) is ok
