"""Shapes of issue 13's /sql/read bypass, shared by the unit (fake store) and fault (real stack) suites.

A CTE named like a file path or a catalog object that DuckDB binds to that object instead of the CTE.
"""

from __future__ import annotations

# system catalog relations a read must never reach, by name or qualified
CATALOG_RELATIONS = (
    "duckdb_views",
    "pg_views",
    "duckdb_tables",
    "duckdb_columns",
    "duckdb_databases",
    "pg_settings",
    "sqlite_master",
    "information_schema.tables",
    "pg_catalog.pg_views",
)
# shapes whose reference has a CTE of that name to bind to (the answer is that CTE's row, x = 1)
BINDS_TO_A_CTE = frozenset({"shadow_then_outer"})


def bypass_shapes(target: str) -> dict[str, str]:
    """Every shape of the reported bypass with ``target`` (a quoted file path or a catalog name)."""
    return {
        "recursive_self": f"WITH RECURSIVE {target} AS (SELECT * FROM {target}) SELECT * FROM {target}",
        "plain_self": f"WITH {target} AS (SELECT * FROM {target}) SELECT * FROM {target}",
        "recursive_union_first": (
            f"WITH RECURSIVE {target} AS (SELECT * FROM {target} UNION SELECT * FROM {target}) "
            f"SELECT * FROM {target}"
        ),
        "scalar_union": f"SELECT (SELECT 1 FROM {target} UNION SELECT 2 LIMIT 1) AS c",
        "later_sibling": f"WITH a AS (SELECT * FROM {target}), {target} AS (SELECT 1 AS x) SELECT * FROM a",
        "shadow_then_outer": (
            f"WITH {target} AS (SELECT 1 AS x) SELECT * FROM (WITH b AS (SELECT * FROM {target}) SELECT * FROM b)"
        ),
        "nested_recursive": (
            f"SELECT * FROM (WITH RECURSIVE {target} AS (SELECT * FROM {target}) SELECT * FROM {target}) q"
        ),
    }
