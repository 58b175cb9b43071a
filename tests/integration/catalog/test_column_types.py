"""walduck/catalog_tables.py's column-type tables agree with the migrated catalog (PostgreSQL's own
information_schema is the oracle): a source without PostgreSQL's types (Debezium's JSON) reads them there."""

from __future__ import annotations

import psycopg
import pytest

from stack.catalog.migrate import apply_migrations
from walduck.catalog_tables import INSTANT_COLUMNS, JSON_COLUMNS, PUBLISHED_TABLES

pytestmark = pytest.mark.integration

# types whose JSON is the same from walduck's connector and from Debezium's JSON converter
PLAIN = {"text", "integer", "bigint", "boolean", "ARRAY"}


def test_jsonb_and_timestamptz_columns_are_the_ones_listed(fresh_db) -> None:
    dsn = fresh_db()
    apply_migrations(dsn)
    with psycopg.connect(dsn) as conn:
        for table in PUBLISHED_TABLES:
            rows = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'timestore' AND table_name = %s",
                [table],
            ).fetchall()
            assert rows, table
            types = dict(rows)
            assert {c for c, t in types.items() if t == "jsonb"} == JSON_COLUMNS[table], table
            assert {c for c, t in types.items() if t == "timestamp with time zone"} == INSTANT_COLUMNS[table]
            others = {t for c, t in types.items() if c not in JSON_COLUMNS[table] | INSTANT_COLUMNS[table]}
            assert others <= PLAIN, (table, others)
