"""PostgreSQL side of the service: saved queries, manifests, /sql/exec, one connection per call.

Every connection runs ``SET search_path TO "<schema>", public`` like Timestore's pool (Timestore's catalog connection pool).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sinks.service.formats import iso_millis

# predefined roles that reach the server's OS: COPY … TO/FROM PROGRAM, server-side file reads and writes
SERVER_ACCESS_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")


class Catalog:
    """``dsn``: the catalog reads and the service's own writes; ``exec_dsn``: ``/sql/exec`` (default ``dsn``)."""

    def __init__(self, dsn: str, schema: str = "timestore", *, exec_dsn: str | None = None) -> None:
        self.dsn = dsn
        self.exec_dsn = exec_dsn or dsn
        self.schema = schema

    @asynccontextmanager
    async def connect(
        self, *, autocommit: bool = True, exec_role: bool = False
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        dsn = self.exec_dsn if exec_role else self.dsn
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)
        try:
            await conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.schema)))
            yield conn
        finally:
            await conn.close()

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """PostgreSQL answers ``SELECT 1`` as the read role within ``timeout_s`` (the service's /ready)."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(timeout_s))
            )
        except psycopg.Error:
            return False
        try:
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout_s)
            return True
        except (psycopg.Error, TimeoutError):
            return False
        finally:
            await conn.close()

    # --- saved queries (Timestore's SQL HTTP API contract) ----------------------------------------------------------
    _SAVED_COLUMNS = "id, statement, label, created_by, stats, created_at, updated_at"

    async def current_wal_lsn(self) -> int:
        """PostgreSQL's current WAL position (what a context must apply to be as new as the catalog)."""
        async with self.connect() as conn:
            row = await (await conn.execute("SELECT pg_current_wal_lsn()::text")).fetchone()
        from walduck.lsn import parse_lsn

        assert row is not None
        return parse_lsn(row[0])

    async def list_saved(self) -> list[dict[str, Any]]:
        async with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {self._SAVED_COLUMNS} FROM sql_saved_queries ORDER BY updated_at DESC, id ASC"
            )
            return [saved_query_json(r) for r in await cur.fetchall()]

    async def get_saved(self, query_id: str) -> dict[str, Any] | None:
        async with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {self._SAVED_COLUMNS} FROM sql_saved_queries WHERE id = %s", [query_id]
            )
            row = await cur.fetchone()
            return saved_query_json(row) if row else None

    async def upsert_saved(
        self,
        query_id: str,
        statement: str,
        label: str | None,
        stats: dict[str, int] | None,
        created_by: str | None,
    ) -> dict[str, Any]:
        async with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO sql_saved_queries (id, statement, label, created_by, stats)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET statement = EXCLUDED.statement, label = EXCLUDED.label,"
                " stats = EXCLUDED.stats, updated_at = NOW()"
                f" RETURNING {self._SAVED_COLUMNS}",
                [query_id, statement, label, created_by, Jsonb(stats or {})],
            )
            row = await cur.fetchone()
            assert row is not None
            return saved_query_json(row)

    async def delete_saved(self, query_id: str) -> bool:
        async with self.connect() as conn:
            cur = await conn.execute("DELETE FROM sql_saved_queries WHERE id = %s", [query_id])
            return cur.rowcount > 0

    # --- manifests (Timestore's admin routes) -------------------------------------------------
    async def find_dataset(self, id_or_slug: str) -> dict[str, Any] | None:
        """By id first, then by slug."""
        async with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            for column in ("id", "slug"):
                await cur.execute(
                    sql.SQL("SELECT id, slug, metadata FROM datasets WHERE {} = %s").format(
                        sql.Identifier(column)
                    ),
                    [id_or_slug],
                )
                row = await cur.fetchone()
                if row:
                    return row
        return None

    async def published_manifests(self, dataset_id: str, shard: str | None = None) -> list[dict[str, Any]]:
        """Published manifests (shard ASC, version DESC) with partitions (start_time, id) and schema."""
        async with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM dataset_manifests WHERE dataset_id = %s AND status = 'published'"
                " AND (%s::text IS NULL OR manifest_shard = %s) ORDER BY manifest_shard ASC, version DESC",
                [dataset_id, shard, shard],
            )
            manifests = await cur.fetchall()
            if not manifests:
                return []
            ids = [m["id"] for m in manifests]
            await cur.execute(
                "SELECT * FROM dataset_partitions WHERE manifest_id = ANY(%s) ORDER BY start_time, id", [ids]
            )
            by_manifest: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
            for p in await cur.fetchall():
                by_manifest[p["manifest_id"]].append(partition_json(p))
            version_ids = sorted({m["schema_version_id"] for m in manifests if m["schema_version_id"]})
            versions: dict[str, dict[str, Any]] = {}
            if version_ids:
                await cur.execute(
                    "SELECT id, version, schema FROM dataset_schema_versions WHERE id = ANY(%s)",
                    [version_ids],
                )
                for v in await cur.fetchall():
                    fields = (v["schema"] or {}).get("fields") or []
                    versions[v["id"]] = {
                        "id": v["id"],
                        "version": v["version"],
                        "fields": [
                            {"name": f.get("name"), "type": f.get("type")}
                            for f in fields
                            if isinstance(f, dict)
                        ],
                    }
        out = []
        for m in manifests:
            item = manifest_json(m)
            item["partitions"] = by_manifest[m["id"]]
            item["schemaVersion"] = versions.get(m["schema_version_id"] or "")
            out.append(item)
        return out


def _iso(value: Any) -> Any:
    return iso_millis(value) if isinstance(value, dt.datetime) else value


def saved_query_json(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "statement": row["statement"],
        "label": row["label"],
    }
    if row.get("stats") is not None:
        out["stats"] = row["stats"]
    out.update(
        {
            "createdBy": row["created_by"],
            "createdAt": _iso(row["created_at"]),
            "updatedAt": _iso(row["updated_at"]),
        }
    )
    return out


_MANIFEST_KEYS = (
    ("id", "id"),
    ("datasetId", "dataset_id"),
    ("version", "version"),
    ("status", "status"),
    ("schemaVersionId", "schema_version_id"),
    ("parentManifestId", "parent_manifest_id"),
    ("manifestShard", "manifest_shard"),
    ("summary", "summary"),
    ("statistics", "statistics"),
    ("metadata", "metadata"),
    ("partitionCount", "partition_count"),
    ("totalRows", "total_rows"),
    ("totalBytes", "total_bytes"),
    ("createdBy", "created_by"),
    ("createdAt", "created_at"),
    ("updatedAt", "updated_at"),
    ("publishedAt", "published_at"),
)
_PARTITION_KEYS = (
    ("id", "id"),
    ("datasetId", "dataset_id"),
    ("manifestId", "manifest_id"),
    ("manifestShard", "manifest_shard"),
    ("partitionKey", "partition_key"),
    ("storageTargetId", "storage_target_id"),
    ("fileFormat", "file_format"),
    ("filePath", "file_path"),
    ("fileSizeBytes", "file_size_bytes"),
    ("rowCount", "row_count"),
    ("startTime", "start_time"),
    ("endTime", "end_time"),
    ("checksum", "checksum"),
    ("metadata", "metadata"),
    ("columnStatistics", "column_statistics"),
    ("columnBloomFilters", "column_bloom_filters"),
    ("ingestionSignature", "ingestion_signature"),
    ("createdAt", "created_at"),
)


def manifest_json(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _iso(row.get(column)) for key, column in _MANIFEST_KEYS}


def partition_json(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _iso(row.get(column)) for key, column in _PARTITION_KEYS}


def command_of(status: str | None) -> str:
    """``'INSERT 0 1'`` -> ``'INSERT'`` (node-postgres ``result.command``)."""
    return (status or "UNKNOWN").split(" ", 1)[0] or "UNKNOWN"


async def privileged_reach(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """What makes this connection dangerous for arbitrary SQL: the superuser roles and server-access roles
    its session user is, or can ``SET ROLE`` to (membership). Empty for a least-privilege role."""
    cur = await conn.execute(
        "SELECT p.rolname FROM pg_roles p WHERE pg_has_role(session_user, p.oid, 'MEMBER')"
        " AND (p.rolsuper OR p.rolname = ANY(%s)) ORDER BY p.rolsuper DESC, p.rolname",
        [list(SERVER_ACCESS_ROLES)],
    )
    return [row[0] for row in await cur.fetchall()]


async def exec_statement(
    conn: psycopg.AsyncConnection[Any], statement: str, params: Sequence[Any], timeout_ms: int
) -> psycopg.AsyncRawCursor[Any]:
    """Run ``statement`` (``$1..$n`` placeholders, any statement) under ``SET statement_timeout``.

    The result is held by the client cursor; the HTTP body is then streamed from it in chunks
    (psycopg's single-row ``stream()`` refuses statements without a result set, e.g. INSERT).
    """
    await conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(max(0, int(timeout_ms)))))
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(statement, list(params) if params else None)
    return cur
