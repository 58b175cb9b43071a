"""Issue 20's schema-evolution cases written with plain psycopg, and an independent oracle for them.

The cases (a catalog as Timestore's lifecycle jobs leave it):

* **A**: dataset with schema v1 and one file without column ``site``; ONE transaction adds v2 (with
  ``site``), supersedes the manifest with a v2 manifest and copies the v1 file into it without
  ``metadata.schemaVersionId``.
* **B**: dataset with v1, manifest M, partition p1 (no ``site``, no metadata); ONE transaction adds v2, sets
  ``dataset_manifests.schema_version_id = v2`` on M and inserts p2 with ``site``. ``p1_first`` says whether
  p1's time window lies before p2's: a relation listing one ``read_parquet`` over both files took its
  columns from the first file, so the outcome depended on the files' order (the "state the case does not
  pin down").
* **C**: a v2 file whose ``value`` column is VARCHAR while the schema says double: the partition's
  ``value`` reads as NULL with a warning, the dataset stays readable.

The oracle reads the dataset's visible Parquet files with a fresh in-memory DuckDB (``union_by_name``),
nothing of walduck's context.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg.types.json import Jsonb

from walduck.catalog_reader import storage_targets, visible_partitions
from walduck.locations import partition_location

V1 = [{"name": "timestamp", "type": "timestamp"}, {"name": "value", "type": "double"}]
V2 = [*V1, {"name": "site", "type": "string"}]
TARGET_ID = "st-schema-cases"


@dataclass
class Catalog:
    """Writes the cases into a migrated catalog (autocommit connection, ``search_path`` = the schema)."""

    dsn: str
    schema: str
    storage_root: Path
    conn: psycopg.Connection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = psycopg.connect(self.dsn, autocommit=True)
        self.conn.execute(f'SET search_path TO "{self.schema}", public')
        self.storage_root.mkdir(parents=True, exist_ok=True)
        self.conn.execute(
            """INSERT INTO storage_targets (id, name, kind, config) VALUES (%s, %s, 'local', %s)
               ON CONFLICT (id) DO UPDATE SET config = EXCLUDED.config""",
            [TARGET_ID, TARGET_ID, Jsonb({"root": str(self.storage_root)})],
        )

    def close(self) -> None:
        self.conn.close()

    # -------------------------------------------------------------------------------- building blocks
    def dataset(self, slug: str) -> tuple[str, str]:
        ds = f"ds-{uuid.uuid4().hex[:12]}"
        self.conn.execute(
            """INSERT INTO datasets (id, slug, name, status, write_format, default_storage_target_id, metadata)
               VALUES (%s, %s, %s, 'active', 'parquet', %s, %s)""",
            [ds, slug, slug, TARGET_ID, Jsonb({"defaultTimestampColumn": "timestamp"})],
        )
        return ds, self.schema_version(self.conn, ds, 1, V1)

    @staticmethod
    def schema_version(cur: Any, ds: str, version: int, fields: list[dict[str, str]]) -> str:
        sv = f"sv-{uuid.uuid4().hex[:12]}"
        cur.execute(
            "INSERT INTO dataset_schema_versions (id, dataset_id, version, schema) VALUES (%s, %s, %s, %s)",
            [sv, ds, version, Jsonb({"fields": fields})],
        )
        return sv

    def write_file(
        self, slug: str, start: datetime, rows: int, site: bool, value_type: str = "double"
    ) -> dict:
        """A Parquet file of ``rows`` rows from ``start``; ``value_type`` 'string' writes value as VARCHAR."""
        ts = [start + timedelta(seconds=i) for i in range(rows)]
        values = [float(i % 17) + 0.5 for i in range(rows)]
        cols: dict[str, Any] = {
            "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "value": pa.array([str(v) for v in values]) if value_type == "string" else pa.array(values),
        }
        if site:
            cols["site"] = pa.array([f"site-{i % 3}" for i in range(rows)])
        rel = f"{slug}/{uuid.uuid4().hex}.parquet"
        path = self.storage_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        return {
            "file_path": rel,
            "rows": rows,
            "start": ts[0],
            "end": ts[-1],
            "bytes": path.stat().st_size,
        }

    def copy_file(self, slug: str, f: dict) -> dict:
        """The file copied to a new path (a catalog path is unique per dataset and target)."""
        rel = f"{slug}/{uuid.uuid4().hex}.parquet"
        shutil.copyfile(self.storage_root / f["file_path"], self.storage_root / rel)
        return {**f, "file_path": rel}

    @staticmethod
    def manifest(cur: Any, ds: str, version: int, sv: str, shard: str, parent: str | None = None) -> str:
        m = f"dm-{uuid.uuid4().hex[:12]}"
        cur.execute(
            """INSERT INTO dataset_manifests (id, dataset_id, version, status, schema_version_id,
                                              parent_manifest_id, manifest_shard, published_at)
               VALUES (%s, %s, %s, 'published', %s, %s, %s, NOW())""",
            [m, ds, version, sv, parent, shard],
        )
        return m

    @staticmethod
    def partition(
        cur: Any,
        ds: str,
        manifest: str,
        shard: str,
        f: dict,
        metadata: dict | None = None,
        pid: str | None = None,
    ) -> str:
        p = pid or f"p-{uuid.uuid4().hex[:12]}"
        cur.execute(
            """INSERT INTO dataset_partitions (id, dataset_id, manifest_id, manifest_shard, partition_key,
                                               storage_target_id, file_format, file_path, file_size_bytes,
                                               row_count, start_time, end_time, metadata)
               VALUES (%s, %s, %s, %s, %s, %s, 'parquet', %s, %s, %s, %s, %s, %s)""",
            [
                p,
                ds,
                manifest,
                shard,
                Jsonb({"window": shard}),
                TARGET_ID,
                f["file_path"],
                f["bytes"],
                f["rows"],
                f["start"],
                f["end"],
                Jsonb(metadata or {}),
            ],
        )
        return p

    # ------------------------------------------------------------------------------------- the cases
    def case_a(self, slug: str) -> str:
        ds, v1 = self.dataset(slug)
        day = datetime(2024, 3, 1, 6, tzinfo=UTC)
        shard = "2024-03-01"
        old = self.write_file(slug, day, 40, site=False)
        with self.conn.transaction(), self.conn.cursor() as cur:
            m1 = self.manifest(cur, ds, 1, v1, shard)
            self.partition(cur, ds, m1, shard, old)
        with self.conn.transaction(), self.conn.cursor() as cur:
            v2 = self.schema_version(cur, ds, 2, V2)
            cur.execute("UPDATE dataset_manifests SET status = 'superseded' WHERE id = %s", [m1])
            m2 = self.manifest(cur, ds, 2, v2, shard, parent=m1)
            self.partition(cur, ds, m2, shard, self.copy_file(slug, old))  # no metadata.schemaVersionId
        return ds

    def case_b(self, slug: str, p1_first: bool) -> str:
        ds, v1 = self.dataset(slug)
        base = datetime(2024, 3, 2, 6, tzinfo=UTC)
        shard = "2024-03-02"
        early, late = base, base + timedelta(hours=3)
        f1 = self.write_file(slug, early if p1_first else late, 30, site=False)
        f2 = self.write_file(slug, late if p1_first else early, 20, site=True)
        with self.conn.transaction(), self.conn.cursor() as cur:
            m = self.manifest(cur, ds, 1, v1, shard)
            self.partition(cur, ds, m, shard, f1)
        with self.conn.transaction(), self.conn.cursor() as cur:
            v2 = self.schema_version(cur, ds, 2, V2)
            cur.execute("UPDATE dataset_manifests SET schema_version_id = %s WHERE id = %s", [v2, m])
            self.partition(cur, ds, m, shard, f2)
        return ds

    def case_c(self, slug: str) -> tuple[str, str]:
        """Returns (dataset id, the partition whose value column is VARCHAR)."""
        ds, _v1 = self.dataset(slug)
        shard = "2024-03-03"
        good = self.write_file(slug, datetime(2024, 3, 3, 1, tzinfo=UTC), 25, site=True)
        bad = self.write_file(slug, datetime(2024, 3, 3, 2, tzinfo=UTC), 15, site=True, value_type="string")
        with self.conn.transaction(), self.conn.cursor() as cur:
            v2 = self.schema_version(cur, ds, 2, V2)
            m = self.manifest(cur, ds, 1, v2, shard)
            self.partition(cur, ds, m, shard, good, {"schemaVersionId": v2})
            pid = self.partition(cur, ds, m, shard, bad, {"schemaVersionId": v2})
        return ds, pid

    def unreadable(self, slug: str) -> str:
        """A dataset whose one partition's file is not Parquet: its relation cannot bind."""
        ds, v1 = self.dataset(slug)
        shard = "2024-03-04"
        rel = f"{slug}/{uuid.uuid4().hex}.parquet"
        path = self.storage_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not a parquet file")
        f = {"file_path": rel, "rows": 1, "start": datetime(2024, 3, 4, tzinfo=UTC), "bytes": 18}
        f["end"] = f["start"]
        with self.conn.transaction(), self.conn.cursor() as cur:
            m = self.manifest(cur, ds, 1, v1, shard)
            self.partition(cur, ds, m, shard, f, {"schemaVersionId": v1})
        return ds


@dataclass(frozen=True)
class Answer:
    rows: int
    value_sum: float
    sites: int  # non-null site values


def visible_files(dsn: str, schema: str, storage_root: str | Path, dataset_id: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        visible = visible_partitions(conn, schema)
        targets = storage_targets(conn, schema)
    return sorted(
        partition_location(targets[row["storage_target_id"]], row["file_path"], str(storage_root))
        for (did, _shard), parts in visible.items()
        if did == dataset_id
        for row in parts.values()
    )


def oracle(files: list[str]) -> Answer:
    """count(*), sum(value) and count(site) of the files, by a fresh DuckDB, file by file (each file's own
    columns; the total row count is checked against one ``union_by_name`` scan); a file whose ``value`` is
    not numeric counts its rows but not its values."""
    if not files:
        return Answer(0, 0.0, 0)
    con = duckdb.connect()
    try:
        rows = value_sum = sites = 0
        for f in files:  # per file: a file's own columns, nothing unified across files
            cols = {r[0]: r[1] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [f]).fetchall()}
            n, s = con.execute(
                "SELECT count(*), coalesce(sum(value), 0) FROM read_parquet(?)"
                if cols.get("value") in ("DOUBLE", "BIGINT", "INTEGER", "FLOAT")
                else "SELECT count(*), 0 FROM read_parquet(?)",
                [f],
            ).fetchone()
            rows += n
            value_sum += s
            if "site" in cols:
                sites += con.execute("SELECT count(site) FROM read_parquet(?)", [f]).fetchone()[0]
        union = con.execute("SELECT count(*) FROM read_parquet(?, union_by_name = true)", [files]).fetchone()[
            0
        ]
        assert union == rows, "oracle: per-file and union_by_name counts differ"
        return Answer(int(rows), float(value_sum), int(sites))
    finally:
        con.close()
