"""Issue 20, property: random schema evolutions, supersedes, compactions, manifest version moves and file
copies give the same answers from a context built incrementally (change records -> compactor -> deltas ->
``apply``) and from one rebuilt from PostgreSQL (the same catalog, written for real), and both equal a fresh
DuckDB over the visible files.

Each operation is written to the real PostgreSQL AND emitted as the change records the connector would
publish for it (``CatalogModel._commit``), so both contexts see the same catalog at the same LSN.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from pipeline.compaction import Compactor
from sinks.context.store import ContextStore
from sinks.settings import SinkSettings
from stack.catalog.migrate import apply_migrations
from support.catalog_model import CatalogModel
from support.schema_cases import TARGET_ID, V1, V2, Catalog, oracle, visible_files
from walduck.config import WalduckSettings
from walduck.records import Op

pytestmark = pytest.mark.integration

OPS = ("append_old", "append_new", "evolve", "supersede_copy", "compact", "move_manifest_version")
_run = itertools.count()


class World:
    """One dataset, one shard, written to PostgreSQL and as change records."""

    def __init__(self, catalog: Catalog, model: CatalogModel, tag: str) -> None:
        self.cat, self.model, self.tag = catalog, model, tag
        self.slug = f"prop-{tag}"
        self.ds = f"ds-{tag}"
        self.shard = "2024-05-01"
        self.versions: list[dict[str, Any]] = []
        self.parts: dict[str, dict[str, Any]] = {}  # rows of the published manifest
        self.hour = 0
        now = datetime(2024, 5, 1, tzinfo=UTC).isoformat()
        row = {
            "id": self.ds,
            "slug": self.slug,
            "name": self.slug,
            "description": None,
            "status": "active",
            "write_format": "parquet",
            "default_storage_target_id": TARGET_ID,
            "metadata": {"defaultTimestampColumn": "timestamp"},
            "created_at": now,
            "updated_at": now,
        }
        with catalog.conn.transaction():
            catalog.conn.execute(
                "INSERT INTO datasets (id, slug, name, status, write_format, default_storage_target_id, metadata)"
                " VALUES (%s, %s, %s, 'active', 'parquet', %s, %s)",
                [self.ds, self.slug, self.slug, TARGET_ID, Jsonb(row["metadata"])],
            )
        model._commit([("datasets", Op.INSERT, None, row)])
        self.evolve(V1)
        self.manifest = self._manifest_row(self.versions[-1]["id"], None)
        with catalog.conn.transaction(), catalog.conn.cursor() as cur:
            self._insert_manifest(cur, self.manifest)
        model._commit([("dataset_manifests", Op.INSERT, None, dict(self.manifest))])

    # ----------------------------------------------------------------------------------- rows
    def _manifest_row(self, sv: str, parent: str | None) -> dict[str, Any]:
        version = 1 + (self.manifest["version"] if parent else 0)
        return {
            "id": f"dm-{uuid.uuid4().hex[:10]}",
            "dataset_id": self.ds,
            "version": version,
            "status": "published",
            "schema_version_id": sv,
            "parent_manifest_id": parent,
            "manifest_shard": self.shard,
        }

    def _insert_manifest(self, cur: Any, m: dict[str, Any]) -> None:
        cur.execute(
            "INSERT INTO dataset_manifests (id, dataset_id, version, status, schema_version_id,"
            " parent_manifest_id, manifest_shard, published_at) VALUES (%s, %s, %s, 'published', %s, %s, %s, NOW())",
            [
                m["id"],
                m["dataset_id"],
                m["version"],
                m["schema_version_id"],
                m["parent_manifest_id"],
                self.shard,
            ],
        )

    def _part_row(self, f: dict[str, Any], manifest_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"p-{uuid.uuid4().hex[:10]}",
            "dataset_id": self.ds,
            "manifest_id": manifest_id,
            "manifest_shard": self.shard,
            "partition_key": {"window": self.shard},
            "storage_target_id": TARGET_ID,
            "file_format": "parquet",
            "file_path": f["file_path"],
            "file_size_bytes": f["bytes"],
            "row_count": f["rows"],
            "start_time": f["start"].isoformat(),
            "end_time": f["end"].isoformat(),
            "metadata": metadata,
            "_file": f,
        }

    def _insert_part(self, cur: Any, row: dict[str, Any]) -> dict[str, Any]:
        Catalog.partition(
            cur, self.ds, row["manifest_id"], self.shard, row["_file"], row["metadata"], row["id"]
        )
        return {k: v for k, v in row.items() if k != "_file"}

    def _file(self, site: bool) -> dict[str, Any]:
        self.hour += 1
        return self.cat.write_file(
            self.slug,
            datetime(2024, 5, 1, tzinfo=UTC) + timedelta(minutes=7 * self.hour),
            5 + self.hour % 4,
            site=site,
        )

    def _meta(self, with_version: bool, sv: str) -> dict[str, Any]:
        return {"schemaVersionId": sv} if with_version else {}

    # ------------------------------------------------------------------------------ operations
    def evolve(self, fields: list[dict[str, str]] | None = None) -> None:
        fields = fields or (V2 if self.versions else V1)
        row = {
            "id": f"sv-{uuid.uuid4().hex[:10]}",
            "dataset_id": self.ds,
            "version": len(self.versions) + 1,
            "schema": {"fields": fields},
        }
        with self.cat.conn.transaction():
            self.cat.conn.execute(
                "INSERT INTO dataset_schema_versions (id, dataset_id, version, schema) VALUES (%s, %s, %s, %s)",
                [row["id"], self.ds, row["version"], Jsonb(row["schema"])],
            )
        self.model._commit([("dataset_schema_versions", Op.INSERT, None, row)])
        self.versions.append(row)

    def append(self, site: bool, with_version: bool) -> None:
        sv = self.versions[-1]["id"] if site else self.versions[0]["id"]
        row = self._part_row(self._file(site), self.manifest["id"], self._meta(with_version, sv))
        with self.cat.conn.transaction(), self.cat.conn.cursor() as cur:
            clean = self._insert_part(cur, row)
        self.model._commit([("dataset_partitions", Op.INSERT, None, clean)])
        self.parts[clean["id"]] = clean

    def supersede_copy(self, with_version: bool) -> None:
        """A new manifest (newest version) with a COPY of every file, metadata kept or dropped."""
        old = dict(self.manifest)
        new = self._manifest_row(self.versions[-1]["id"], old["id"])
        changes: list[tuple[str, Op, Any, Any]] = []
        parts: dict[str, dict[str, Any]] = {}
        with self.cat.conn.transaction(), self.cat.conn.cursor() as cur:
            cur.execute("UPDATE dataset_manifests SET status = 'superseded' WHERE id = %s", [old["id"]])
            changes.append(("dataset_manifests", Op.UPDATE, old, {**old, "status": "superseded"}))
            self._insert_manifest(cur, new)
            changes.append(("dataset_manifests", Op.INSERT, None, dict(new)))
            for p in self.parts.values():
                f = self.cat.copy_file(
                    self.slug,
                    {
                        "file_path": p["file_path"],
                        "rows": p["row_count"],
                        "bytes": p["file_size_bytes"],
                        "start": datetime.fromisoformat(p["start_time"]),
                        "end": datetime.fromisoformat(p["end_time"]),
                    },
                )
                meta = p["metadata"] if with_version else {}
                clean = self._insert_part(cur, self._part_row(f, new["id"], meta))
                changes.append(("dataset_partitions", Op.INSERT, None, clean))
                parts[clean["id"]] = clean
        self.model._commit(changes)
        self.manifest, self.parts = new, parts

    def compact(self) -> None:
        """Two files merged into one (the columns they hold) in the same manifest, attributed to the newest
        version in its metadata whether or not the merged file has all of its columns."""
        if len(self.parts) < 2:
            return
        victims = sorted(self.parts)[:2]
        import duckdb

        root = self.cat.storage_root
        files = [str(root / self.parts[v]["file_path"]) for v in victims]
        rel = f"{self.slug}/{uuid.uuid4().hex}.parquet"
        con = duckdb.connect()
        con.execute(f"COPY (SELECT * FROM read_parquet(?, union_by_name = true)) TO '{root / rel}'", [files])
        rows = con.execute(
            "SELECT count(*), min(timestamp), max(timestamp) FROM read_parquet(?)", [str(root / rel)]
        ).fetchone()
        con.close()
        f = {
            "file_path": rel,
            "rows": rows[0],
            "start": rows[1],
            "end": rows[2],
            "bytes": (root / rel).stat().st_size,
        }
        row = self._part_row(f, self.manifest["id"], {"schemaVersionId": self.versions[-1]["id"]})
        changes: list[tuple[str, Op, Any, Any]] = []
        with self.cat.conn.transaction(), self.cat.conn.cursor() as cur:
            cur.execute("DELETE FROM dataset_partitions WHERE id = ANY(%s)", [victims])
            for v in victims:
                changes.append(("dataset_partitions", Op.DELETE, self.parts.pop(v), None))
            clean = self._insert_part(cur, row)
            changes.append(("dataset_partitions", Op.INSERT, None, clean))
        self.model._commit(changes)
        self.parts[clean["id"]] = clean

    def move_manifest_version(self) -> None:
        """Case B: the published manifest's schema_version_id moves to the newest version."""
        old = dict(self.manifest)
        new = {**old, "schema_version_id": self.versions[-1]["id"]}
        with self.cat.conn.transaction():
            self.cat.conn.execute(
                "UPDATE dataset_manifests SET schema_version_id = %s WHERE id = %s",
                [new["schema_version_id"], old["id"]],
            )
        self.model._commit([("dataset_manifests", Op.UPDATE, old, new)])
        self.manifest = new

    def step(self, op: str, flag: bool) -> None:
        if op == "append_old":
            self.append(site=False, with_version=flag)
        elif op == "append_new":
            self.append(site=len(self.versions) > 1, with_version=flag)
        elif op == "evolve":
            if len(self.versions) < 2:
                self.evolve()
        elif op == "supersede_copy":
            self.supersede_copy(flag)
        elif op == "compact":
            self.compact()
        else:
            self.move_manifest_version()


def _answers(store: ContextStore, ds: str) -> tuple[int, float, int | None]:
    sql, _warnings = store.relation_sql(ds)
    names = [c for c, _ in store.dataset(ds).columns]
    site = ", count(site)" if "site" in names else ""
    with store.reader() as cur:
        row = cur.execute(f"SELECT count(*), coalesce(sum(value), 0){site} FROM ({sql})").fetchone()
    return int(row[0]), round(float(row[1]), 6), (int(row[2]) if site else None)


@pytest.fixture(scope="module")
def catalog_dsn(pg_dsn: str) -> str:
    name = f"wd_prop_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname=name)
    apply_migrations(dsn)
    yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(OPS), st.booleans()), min_size=1, max_size=12))
def test_incremental_and_rebuilt_contexts_answer_alike(catalog_dsn: str, tmp_path: Path, ops) -> None:
    tag = f"{next(_run)}-{uuid.uuid4().hex[:6]}"
    base = tmp_path / tag
    storage = base / "storage"
    wd = WalduckSettings(data_dir=base / "data", storage_root=storage, topic_partitions=1, pg_dsn=catalog_dsn)
    catalog = Catalog(catalog_dsn, "timestore", storage)
    model = CatalogModel(seed=0)
    try:
        world = World(catalog, model, tag)
        for op, flag in ops:
            world.step(op, flag)
    finally:
        catalog.close()
    compactor = Compactor(0)
    for offset, rec in enumerate(model.records):
        compactor.feed(rec, offset)
    deltas = compactor.flush()
    assert not compactor.drain_rejected()
    incremental = ContextStore(
        SinkSettings(context_path=base / "inc.duckdb", view_refresh_interval_s=0.0), wd
    )
    rebuilt = ContextStore(SinkSettings(context_path=base / "reb.duckdb", view_refresh_interval_s=0.0), wd)
    with incremental, rebuilt:
        for offset, delta in enumerate(deltas):
            incremental.apply(delta, 0, offset)
        rebuilt.rebuild(world.ds)
        want = oracle(visible_files(catalog_dsn, "timestore", storage, world.ds))
        got_inc, got_reb = _answers(incremental, world.ds), _answers(rebuilt, world.ds)
        assert got_inc == got_reb, (ops, got_inc, got_reb)
        assert got_inc[0] == want.rows and abs(got_inc[1] - want.value_sum) < 1e-6, (ops, got_inc, want)
        if got_inc[2] is not None:
            assert got_inc[2] == want.sites, (ops, got_inc, want)
        # one attribution rule: both contexts attribute every partition to the same version
        q = "SELECT id, schema_version_id FROM wd.partitions WHERE dataset_id = ? ORDER BY id"
        with incremental.reader() as a, rebuilt.reader() as b:
            assert a.execute(q, [world.ds]).fetchall() == b.execute(q, [world.ds]).fetchall()
