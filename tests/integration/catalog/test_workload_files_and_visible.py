"""The generator's catalog is consistent with its Parquet files, and visible_partitions follows
published manifests only."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from stack.catalog.migrate import apply_migrations
from stack.workload.generator import DEFAULT_STORAGE_TARGET_ID, Workload
from walduck.catalog_reader import storage_targets, visible_partitions
from walduck.deltas import PARTITION_FIELDS
from walduck.locations import partition_location
from walduck.timeutil import parse_iso

pytestmark = pytest.mark.integration


def _ran(dsn: str, storage: Path, seed: int, **options: object) -> tuple[Workload, object]:
    apply_migrations(dsn)
    workload = Workload(dsn, "timestore", storage, seed=seed, **options)  # type: ignore[arg-type]
    summary = workload.run(datasets=2, days=2, partitions_per_shard=4, rate=0, duration=60, max_commits=60)
    return workload, summary


@pytest.mark.parametrize(
    "options",
    [{}, {"files": "linked", "owns_datasets": True}],
    ids=["real-files", "linked-files"],
)
def test_run_files_match_catalog_and_visible_set(fresh_db, tmp_path: Path, options: dict) -> None:
    dsn = fresh_db()
    workload, summary = _ran(dsn, tmp_path / "storage", seed=3, **options)
    workload.close()
    assert summary.commits >= 60
    assert summary.operations.get("append", 0) > 0 and summary.last_lsn > summary.first_lsn
    if options.get("files") == "linked":
        # partitions are hard links to a few template files; compactions link merged files written once
        assert workload.links_made >= summary.partitions_added
        assert workload.files_written < workload.links_made
    _check_files_match_catalog(dsn, tmp_path / "storage")


def _check_files_match_catalog(dsn: str, storage: Path) -> None:
    with psycopg.connect(dsn) as conn:
        targets = storage_targets(conn)
        assert targets[DEFAULT_STORAGE_TARGET_ID]["kind"] == "local"
        assert targets[DEFAULT_STORAGE_TARGET_ID]["config"]["root"] == str(storage.resolve())
        visible = visible_partitions(conn)
        rollups = {
            (r[0], r[1]): (r[2], r[3], r[4])
            for r in conn.execute(
                "SELECT dataset_id, manifest_shard, partition_count, total_rows, total_bytes"
                " FROM timestore.dataset_manifests WHERE status = 'published'"
            )
        }
    assert set(visible) == set(rollups)
    checked = 0
    for key, parts in visible.items():
        count, rows, size = rollups[key]
        assert count == len(parts)
        assert rows == sum(p["row_count"] for p in parts.values())
        assert size == sum(p["file_size_bytes"] for p in parts.values())
        for pid, part in parts.items():
            assert set(part) == set(PARTITION_FIELDS) and part["id"] == pid
            assert part["manifest_shard"] == key[1] and part["table_name"] == "records"
            assert part["schema_version_id"].startswith("dsv-")
            assert part["start_time"].endswith("+00:00")
            location = partition_location(targets[part["storage_target_id"]], part["file_path"], "/nowhere")
            table = pq.read_table(location)
            assert table.num_rows == part["row_count"]
            assert Path(location).stat().st_size == part["file_size_bytes"]
            ts = table.column("timestamp").to_pylist()
            start, end = parse_iso(part["start_time"]), parse_iso(part["end_time"])
            assert all(isinstance(t, datetime) and start <= t <= end for t in ts)
            assert {"timestamp", "site", "value"} <= set(table.column_names)
            checked += 1
    assert checked > 0


def test_parallel_writers_linked_files_match_catalog(fresh_db, tmp_path: Path) -> None:
    """run_writers: several writer processes on their own datasets; every commit counted, ingestion signatures
    unique although partitions share template files, files consistent with the catalog."""
    from stack.workload.writers import run_writers

    dsn = fresh_db()
    apply_migrations(dsn)
    samples: list[tuple[float, int]] = []
    ran = run_writers(
        dsn, "timestore", tmp_path / "storage", writers=3, datasets=4, days=2, partitions_per_shard=4,
        rate=0, duration=3, seed=5, files="linked", samples_per_s=50,
        on_commit=lambda at, lsn: samples.append((at, lsn)),
    )  # fmt: skip
    summary = ran.summary
    assert len(ran.per_writer) == 3 and all(w.commits > 0 for w in ran.per_writer)
    assert summary.commits == sum(w.commits for w in ran.per_writer)
    assert len(summary.dataset_ids) == len(set(summary.dataset_ids)) == 4
    assert samples and all(lsn > 0 for _, lsn in samples)
    with psycopg.connect(dsn) as conn:
        writes = conn.execute(
            "SELECT count(*), count(DISTINCT (dataset_id, ingestion_signature)) FROM timestore.dataset_partitions"
            " WHERE ingestion_signature IS NOT NULL"
        ).fetchone()
        datasets = conn.execute("SELECT count(*) FROM timestore.datasets").fetchone()
    assert writes is not None and writes[0] > 0 and writes[0] == writes[1]
    assert datasets == (4,)
    _check_files_match_catalog(dsn, tmp_path / "storage")


def test_visible_partitions_excludes_superseded_manifests(fresh_db, tmp_path: Path) -> None:
    dsn = fresh_db()
    apply_migrations(dsn)
    with Workload(dsn, "timestore", tmp_path / "s", seed=5) as workload:
        ds = workload.create_dataset("ds-visible").dataset_id
        old = [workload.ingest(ds, 0) for _ in range(2)]
        other = workload.ingest(ds, 1)
        new = workload.new_manifest_version(ds, 0)
    with psycopg.connect(dsn) as conn:
        visible = visible_partitions(conn)
        still_stored = conn.execute(
            "SELECT COUNT(*) FROM timestore.dataset_partitions WHERE manifest_id = %s", [old[0].manifest_id]
        ).fetchone()
    assert still_stored == (2,)
    assert set(visible) == {(ds, "2024-01-01"), (ds, "2024-01-02")}
    assert set(visible[(ds, "2024-01-01")]) == set(new.added)
    assert set(visible[(ds, "2024-01-02")]) == set(other.added)
    assert {p["manifest_id"] for p in visible[(ds, "2024-01-01")].values()} == {new.manifest_id}


def test_visible_partitions_schema_version_from_metadata_only_and_empty_manifest(
    fresh_db, tmp_path: Path
) -> None:
    dsn = fresh_db()
    apply_migrations(dsn)
    with Workload(dsn, "timestore", tmp_path / "s", seed=6) as workload:
        ds = workload.create_dataset("ds-fallback").dataset_id
        one = workload.ingest(ds, 0)
        workload.ingest(ds, 1)
        workload.retention(ds, 1, count=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # a legacy-looking partition without metadata: NO schema version (issue 20: never the manifest's, which
        # can change without the partition row changing; walduck/attribution.py), the default table name
        conn.execute("UPDATE timestore.dataset_partitions SET metadata = '{}' WHERE id = %s", [one.added[0]])
        visible = visible_partitions(conn)
    part = visible[(ds, "2024-01-01")][one.added[0]]
    assert part["schema_version_id"] is None and part["table_name"] == "records"
    assert visible[(ds, "2024-01-02")] == {}


def test_same_seed_same_catalog(fresh_db, tmp_path: Path) -> None:
    results = []
    for n in range(2):
        dsn = fresh_db()
        workload, summary = _ran(dsn, tmp_path / f"s{n}", seed=9)
        workload.close()
        with psycopg.connect(dsn) as conn:
            visible = visible_partitions(conn)
        flat = {
            pid: (p["row_count"], p["start_time"]) for parts in visible.values() for pid, p in parts.items()
        }
        results.append((summary.operations, flat))
    assert results[0] == results[1]
