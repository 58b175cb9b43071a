"""Apply the Timestore catalog migrations (``migrations/NNN_name.sql``) the way Timestore does.

Each migration runs in its own transaction with ``search_path`` set to the catalog schema, all
under ``pg_advisory_lock(hashtext('timestore:migrations'))``; applied ids are recorded in
``<schema>.schema_migrations``. Every statement is idempotent (``IF NOT EXISTS``), so pointing
this at a database Timestore already migrated is safe.
"""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql

LOCK_KEY = "timestore:migrations"


def migration_files() -> list[tuple[str, str]]:
    """``(id, sql_text)`` of every bundled migration, ordered by id."""
    folder = resources.files("stack.catalog") / "migrations"
    found = [
        (entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found)


def applied_migrations(conn: psycopg.Connection, schema: str = "timestore") -> set[str]:
    row = conn.execute(
        "SELECT to_regclass(format('%%I.schema_migrations', %s::text)) IS NOT NULL", [schema]
    ).fetchone()
    if not row or not row[0]:
        return set()
    query = sql.SQL("SELECT id FROM {}.schema_migrations").format(sql.Identifier(schema))
    return {r[0] for r in conn.execute(query)}


def apply_migrations(dsn: str, schema: str = "timestore") -> list[str]:
    """Apply pending migrations to ``schema``; returns the ids applied now (empty when up to date)."""
    ident = sql.Identifier(schema)
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [LOCK_KEY])
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " id TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())"
                ).format(ident)
            )
            done = applied_migrations(conn, schema)
            for migration_id, text in migration_files():
                if migration_id in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(ident))
                    conn.execute(text.encode())
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.schema_migrations (id) VALUES (%s) ON CONFLICT DO NOTHING"
                        ).format(ident),
                        [migration_id],
                    )
                applied_now.append(migration_id)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [LOCK_KEY])
    return applied_now
