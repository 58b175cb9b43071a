"""Each workload shape is ONE PostgreSQL transaction with Timestore's row changes (Timestore's ingest and lifecycle write paths),
observed through a logical slot with the built-in ``test_decoding`` plugin."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from stack.catalog.migrate import apply_migrations
from stack.workload.generator import Workload

pytestmark = pytest.mark.integration

SLOT = "walduck_shape_test"
CHANGE = re.compile(r"^table (?P<table>[^:]+): (?P<op>INSERT|UPDATE|DELETE): (?P<data>.*)$")

M, P, D = "dataset_manifests", "dataset_partitions", "datasets"


class Slot:
    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [SLOT])

    def transactions(self) -> list[list[tuple[str, str, str]]]:
        """Changes since the last call, grouped by BEGIN/COMMIT: ``[[(table, op, data), …], …]``."""
        rows = self.conn.execute(
            "SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL, 'skip-empty-xacts', '1',"
            " 'include-xids', '0')",
            [SLOT],
        ).fetchall()
        txs: list[list[tuple[str, str, str]]] = []
        current: list[tuple[str, str, str]] | None = None
        for (line,) in rows:
            if line == "BEGIN":
                assert current is None, "nested BEGIN"
                current = []
            elif line == "COMMIT":
                assert current is not None
                txs.append(current)
                current = None
            else:
                match = CHANGE.match(line)
                assert match and current is not None, line
                table = match["table"].split(".")[-1]
                current.append((table, match["op"], match["data"]))
        assert current is None, "unterminated transaction"
        return txs

    def close(self) -> None:
        self.conn.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
        self.conn.close()


def shape(tx: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(table, op) for table, op, _ in tx]


@pytest.fixture
def setup(fresh_db, tmp_path: Path) -> Iterator[tuple[Workload, Slot]]:
    dsn = fresh_db()
    apply_migrations(dsn)
    workload = Workload(dsn, "timestore", tmp_path / "storage", seed=11)
    workload.ensure_storage_target()
    slot = Slot(dsn)
    try:
        yield workload, slot
    finally:
        slot.close()
        workload.close()


def test_dataset_create_and_ingest_shapes(setup: tuple[Workload, Slot]) -> None:
    workload, slot = setup
    created = workload.create_dataset("observatory.sensors", read_scopes=["team:read"])
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [[(D, "INSERT")], [("dataset_schema_versions", "INSERT")]]
    assert "team:read" in txs[0][0][2] and '"defaultTimestampColumn": "timestamp"' in txs[0][0][2]
    assert "version[integer]:1" in txs[1][0][2]
    ds = created.dataset_id

    first = workload.ingest(ds, 0)
    assert first.shape == "new_shard" and first.superseded_manifest_id is None
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [[(M, "INSERT"), (P, "INSERT"), (M, "UPDATE"), (D, "UPDATE")]]
    assert "manifest_shard[text]:'2024-01-01'" in txs[0][1][2]
    assert "status[text]:'published'" in txs[0][0][2]

    second = workload.ingest(ds, 0)
    assert second.shape == "append" and second.manifest_id == first.manifest_id
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [[(P, "INSERT"), (M, "UPDATE"), (M, "UPDATE"), (D, "UPDATE")]]
    assert "partition_count[integer]:2" in txs[0][1][2]
    assert f"id[text]:'{first.manifest_id}'" in txs[0][2][2]
    assert second.lsn > first.lsn

    other_day = workload.ingest(ds, 1)
    assert other_day.shape == "new_shard" and other_day.manifest_id != first.manifest_id
    assert [shape(t) for t in slot.transactions()] == [
        [(M, "INSERT"), (P, "INSERT"), (M, "UPDATE"), (D, "UPDATE")]
    ]


def test_new_manifest_version_supersedes_parent_first(setup: tuple[Workload, Slot]) -> None:
    workload, slot = setup
    ds = workload.create_dataset("ds-versions").dataset_id
    parent = workload.ingest(ds, 0)
    workload.ingest(ds, 0)
    slot.transactions()
    result = workload.new_manifest_version(ds, 0)
    assert result.superseded_manifest_id == parent.manifest_id
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [
        [(M, "UPDATE"), (M, "INSERT"), (P, "INSERT"), (M, "UPDATE"), (D, "UPDATE")]
    ]
    supersede, insert = txs[0][0][2], txs[0][1][2]
    assert f"id[text]:'{parent.manifest_id}'" in supersede and "status[text]:'superseded'" in supersede
    assert f"parent_manifest_id[text]:'{parent.manifest_id}'" in insert and "version[integer]:2" in insert


def test_retention_and_compaction_shapes(setup: tuple[Workload, Slot]) -> None:
    workload, slot = setup
    ds = workload.create_dataset("ds-lifecycle").dataset_id
    results = [workload.ingest(ds, 0) for _ in range(5)]
    slot.transactions()
    storage = workload.storage_root

    expired = workload.retention(ds, 0, count=2)
    assert len(expired.removed) == 2
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [
        [(P, "DELETE"), (P, "DELETE"), (M, "UPDATE"), (M, "UPDATE"), (D, "UPDATE")]
    ]
    assert "partition_count[integer]:3" in txs[0][2][2]
    removed_paths = [r for r in results if r.added[0] in expired.removed]
    assert len(removed_paths) == 2
    with psycopg.connect(workload.dsn) as conn:
        assert conn.execute(
            "SELECT COUNT(*) FROM timestore.dataset_partitions WHERE id = ANY(%s)", [expired.removed]
        ).fetchone() == (0,)

    compacted = workload.compaction(ds, 0, max_group=3)
    assert len(compacted.removed) == 3 and len(compacted.added) == 1
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [
        [(P, "DELETE")] * 3 + [(P, "INSERT"), (M, "UPDATE"), (M, "UPDATE"), (D, "UPDATE")]
    ]
    assert "compacted_range" in txs[0][3][2]
    assert "partition_count[integer]:1" in txs[0][4][2]
    with psycopg.connect(workload.dsn) as conn:
        path, rows = conn.execute(
            "SELECT file_path, row_count FROM timestore.dataset_partitions WHERE id = %s",
            [compacted.added[0]],
        ).fetchone()
    assert pq.read_metadata(storage / path).num_rows == rows
    left = sum(r.rows for r in results if r.added[0] not in expired.removed)
    assert rows == left
    # source files are gone after commit, only the merged file remains for this shard
    files = [
        p for p in storage.rglob("*.parquet") if "window=2024-01-01" in str(p) or "compacted_range" in str(p)
    ]
    assert [p.name for p in files] == [f"{compacted.added[0]}.parquet"]


def test_schema_change_archive_and_metadata_shapes(setup: tuple[Workload, Slot]) -> None:
    workload, slot = setup
    ds = workload.create_dataset("ds-evolve").dataset_id
    before = workload.ingest(ds, 0)
    slot.transactions()

    change = workload.schema_change(ds, "humidity", "double")
    assert [shape(t) for t in slot.transactions()] == [[("dataset_schema_versions", "INSERT")]]

    after = workload.ingest(ds, 0)
    assert after.shape == "append" and after.manifest_id == before.manifest_id
    assert after.schema_version_id == change.schema_version_id
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [[(P, "INSERT"), (M, "UPDATE"), (M, "UPDATE"), (D, "UPDATE")]]
    assert f"schema_version_id[text]:'{change.schema_version_id}'" in txs[0][2][2]
    assert "addedColumns" in txs[0][2][2] and "humidity" in txs[0][2][2]
    with psycopg.connect(workload.dsn) as conn:
        paths = dict(
            conn.execute(
                "SELECT id, file_path FROM timestore.dataset_partitions WHERE id = ANY(%s)",
                [[before.added[0], after.added[0]]],
            ).fetchall()
        )
    assert "humidity" not in pq.read_schema(workload.storage_root / paths[before.added[0]]).names
    assert "humidity" in pq.read_schema(workload.storage_root / paths[after.added[0]]).names

    workload.change_metadata(ds, ["scope:a", "scope:b"])
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [[(D, "UPDATE")]]
    assert "scope:b" in txs[0][0][2]

    workload.archive_dataset(ds)
    txs = slot.transactions()
    assert [shape(t) for t in txs] == [[(D, "UPDATE")]]
    assert "status[text]:'inactive'" in txs[0][0][2]
