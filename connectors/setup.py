"""``walduck connector setup`` (idempotent): publication, replica identity, state table, slot.

* Publication ``settings.publication_name`` FOR TABLE the five catalog tables.
* ``REPLICA IDENTITY FULL`` on them, so UPDATE/DELETE carry the whole old row (a delete can be
  routed to its dataset, manifest and shard). WAL cost: every UPDATE and DELETE on these tables
  logs the complete old row (partitions are insert/delete only, manifests are updated twice per
  append, so the extra WAL is roughly one more row image per manifest update and per partition
  delete).
* The connector's state table ``<state_schema>.connector_state`` (snapshot-done marker per slot;
  not published).
* The logical slot (pgoutput) when it does not exist yet. A slot created here has no snapshot;
  ``connector run`` in ``initial`` mode notices the missing snapshot-done marker and recreates it
  with an exported snapshot.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from walduck.catalog_tables import PUBLISHED_TABLES
from walduck.config import WalduckSettings


def ensure_state_table(conn: psycopg.Connection, state_schema: str) -> None:
    """Create the state table when missing (no DDL when it exists: the connector's role may not create)."""
    found = conn.execute(
        "SELECT to_regclass(format('%%I.connector_state', %s::text)) IS NOT NULL", [state_schema]
    ).fetchone()
    if found and found[0]:
        return
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(state_schema)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.connector_state ("
            " slot_name TEXT PRIMARY KEY,"
            " snapshot_lsn PG_LSN,"
            " snapshot_done_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ).format(sql.Identifier(state_schema))
    )


def ensure_publication(conn: psycopg.Connection, settings: WalduckSettings) -> None:
    schema = sql.Identifier(settings.catalog_schema)
    tables = sql.SQL(", ").join(sql.SQL("{}.{}").format(schema, sql.Identifier(t)) for t in PUBLISHED_TABLES)
    exists = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", [settings.publication_name]
    ).fetchone()
    pub = sql.Identifier(settings.publication_name)
    if exists is None:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, tables))
    else:
        published = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                [settings.publication_name],
            )
        }
        # no DDL when already in place: the connector's own least-privilege role owns neither
        if published != {(settings.catalog_schema, t) for t in PUBLISHED_TABLES}:
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, tables))
    for t in PUBLISHED_TABLES:
        ident = conn.execute(
            "SELECT c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            [settings.catalog_schema, t],
        ).fetchone()
        if ident is None:
            raise RuntimeError(
                f"catalog table {settings.catalog_schema}.{t} is missing (run catalog migrations)"
            )
        if ident[0] != "f":
            conn.execute(sql.SQL("ALTER TABLE {}.{} REPLICA IDENTITY FULL").format(schema, sql.Identifier(t)))


def slot_exists(conn: psycopg.Connection, slot: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone() is not None
    )


def setup(
    settings: WalduckSettings, state_schema: str = "walduck", create_slot: bool = True
) -> dict[str, object]:
    """Idempotent; returns what exists afterwards."""
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        ensure_state_table(conn, state_schema)
        ensure_publication(conn, settings)
        created = False
        if create_slot and not slot_exists(conn, settings.slot_name):
            try:
                conn.execute(
                    "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [settings.slot_name]
                )
                created = True
            except psycopg.errors.DuplicateObject:
                pass
        return {
            "publication": settings.publication_name,
            "tables": list(PUBLISHED_TABLES),
            "slot_created": created,
        }
