"""``walduck query verify``: a context's visible partitions against PostgreSQL's.

Two ways to read the context (docs/contexts.md §Verify):
* ``--url``: ask a running query service (``GET /admin/sql/runtime-cache?detail=partitions``). This
  is the normal way: a running service holds the DuckDB file's write lock, so no other process can
  open it, not even read-only. Verify first waits until the service applied PostgreSQL's current LSN,
  then compares; a difference must persist over ``attempts`` comparisons (writes keep landing while
  we compare) to count as drift.
* otherwise: open the DuckDB file read-only (service stopped), one comparison.

With ``--url`` it also binds every dataset's relation (:func:`unbound_relations`, issue 20): a dataset whose
partition sets match can still be unreadable (a file lacking a column its schema version promised did that).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb
import httpx
import psycopg

from sinks.context.naming import quote_ident
from sinks.settings import SinkSettings
from walduck.catalog_reader import visible_partitions
from walduck.config import WalduckSettings
from walduck.lsn import parse_lsn

# (dataset_id, manifest_shard) -> {partition_id: (file_path, row_count)}
PartitionSets = dict[tuple[str, str], dict[str, tuple[str, int | None]]]


@dataclass(frozen=True, slots=True)
class Drift:
    dataset_id: str
    manifest_shard: str
    partition_id: str
    kind: str  # missing (in PG, not in context) | extra (in context, not in PG) | differs

    def __str__(self) -> str:
        return f"{self.kind}: dataset {self.dataset_id} shard {self.manifest_shard} partition {self.partition_id}"


def pg_partitions(conn: psycopg.Connection, schema: str) -> tuple[PartitionSets, int]:
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        lsn = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
        visible = visible_partitions(conn, schema)
    out: PartitionSets = {
        key: {pid: (row["file_path"], row.get("row_count")) for pid, row in parts.items()}
        for key, parts in visible.items()
        if parts
    }
    return out, lsn


def _group(rows: Iterable[tuple[str, str, str, str, int | None]]) -> PartitionSets:
    out: PartitionSets = {}
    for did, mshard, pid, path, rows_ in rows:
        out.setdefault((did, mshard), {})[pid] = (path, rows_)
    return out


def context_partitions_from_file(settings: SinkSettings, walduck: WalduckSettings) -> PartitionSets:
    path = settings.resolved_context_path(walduck)
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            "SELECT dataset_id, manifest_shard, id, file_path, row_count FROM wd.partitions"
        ).fetchall()
    finally:
        con.close()
    return _group(rows)


DEFAULT_VERIFY_SCOPES = "timestore:admin"


def context_snapshot_from_service(
    url: str, timeout_s: float = 30.0, scopes: str | None = DEFAULT_VERIFY_SCOPES
) -> dict[str, Any]:
    """The service's runtime-cache snapshot; ``scopes`` goes in ``x-iam-scopes`` (the route needs the admin
    scope when the service has one configured, as a gateway would set it)."""
    headers: dict[str, str] = {}
    if scopes:
        headers["x-iam-scopes"] = scopes
    resp = httpx.get(
        url.rstrip("/") + "/admin/sql/runtime-cache",
        params={"detail": "partitions"},
        headers=headers,
        timeout=timeout_s,
    )
    resp.raise_for_status()
    body = resp.json()
    return body.get("snapshot", body)


def partitions_of_snapshot(snapshot: dict[str, Any]) -> PartitionSets:
    rows = [
        (p["datasetId"], p["manifestShard"], p["partitionId"], p["filePath"], p.get("rowCount"))
        for ds in snapshot.get("datasets", [])
        for p in ds.get("partitions", [])
    ]
    return _group(rows)


def compare(pg: PartitionSets, ctx: PartitionSets) -> list[Drift]:
    drifts: list[Drift] = []
    for key in sorted(set(pg) | set(ctx)):
        want, have = pg.get(key, {}), ctx.get(key, {})
        for pid in sorted(set(want) | set(have)):
            if pid not in have:
                drifts.append(Drift(key[0], key[1], pid, "missing"))
            elif pid not in want:
                drifts.append(Drift(key[0], key[1], pid, "extra"))
            elif want[pid] != have[pid]:
                drifts.append(Drift(key[0], key[1], pid, "differs"))
    return drifts


def verify(
    walduck: WalduckSettings,
    settings: SinkSettings,
    url: str | None = None,
    attempts: int = 3,
    wait_s: float = 30.0,
    scopes: str | None = DEFAULT_VERIFY_SCOPES,
) -> list[Drift]:
    """Drifts between PostgreSQL and the context (empty = in step)."""
    persistent: set[Drift] | None = None
    for attempt in range(max(attempts, 1) if url else 1):
        with psycopg.connect(walduck.pg_dsn) as conn:
            pg, lsn = pg_partitions(conn, walduck.catalog_schema)
        if url:
            deadline = time.monotonic() + wait_s
            while True:
                snap = context_snapshot_from_service(url, scopes=scopes)
                if parse_lsn(snap.get("appliedLsn") or "0/0") >= lsn or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            ctx = partitions_of_snapshot(snap)
        else:
            ctx = context_partitions_from_file(settings, walduck)
        found = set(compare(pg, ctx))
        persistent = found if persistent is None else persistent & found
        if not persistent:
            return []
        if attempt + 1 < attempts:
            time.sleep(0.5)
    return sorted(persistent or set(), key=lambda d: (d.dataset_id, d.manifest_shard, d.partition_id))


@dataclass(frozen=True, slots=True)
class Unbound:
    """A dataset whose relation does not bind: ``SELECT * … LIMIT 0`` through ``/sql/read`` failed."""

    dataset_id: str
    slug: str
    error: str

    def __str__(self) -> str:
        return f"unbound: dataset {self.dataset_id} ({self.slug}): {self.error}"


DEFAULT_READ_SCOPES = "timestore:admin,timestore:sql:read"
"""x-iam-scopes of the bind check's reads: the admin scope reads every dataset, the SQL read scope the route."""


def _bind_error(url: str, slug: str, scopes: str | None, timeout_s: float) -> str | None:
    headers = {"x-iam-scopes": scopes} if scopes else {}
    resp = httpx.post(
        url.rstrip("/") + "/sql/read",
        json={"sql": f"SELECT * FROM timestore.{quote_ident(slug)} LIMIT 0"},
        headers=headers,
        timeout=timeout_s,
    )
    if resp.status_code == 200:
        return None
    try:
        message = str(resp.json().get("message") or resp.text)
    except ValueError:
        message = resp.text
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{resp.status_code} {first}"[:500]


def unbound_relations(
    url: str,
    scopes: str | None = DEFAULT_VERIFY_SCOPES,
    read_scopes: str | None = DEFAULT_READ_SCOPES,
    timeout_s: float = 30.0,
) -> list[Unbound]:
    """Every dataset of the running service whose relation does not bind, through the path ``/sql/read``
    takes (IAM, planner, execution guard, DuckDB bind and execute) with a ``LIMIT 0`` select. A failure is
    asked again once against a fresh snapshot (a dataset deleted meanwhile is not reported)."""
    snap = context_snapshot_from_service(url, scopes=scopes)
    failed = {
        ds["datasetId"]
        for ds in snap.get("datasets", [])
        if _bind_error(url, ds["datasetSlug"], read_scopes, timeout_s) is not None
    }
    if not failed:
        return []
    time.sleep(0.5)
    still = {
        ds["datasetId"]: ds["datasetSlug"]
        for ds in context_snapshot_from_service(url, scopes=scopes).get("datasets", [])
    }
    out: list[Unbound] = []
    for did in sorted(failed):
        if did not in still:
            continue
        error = _bind_error(url, still[did], read_scopes, timeout_s)
        if error is not None:
            out.append(Unbound(did, still[did], error))
    return out
