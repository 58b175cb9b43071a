"""Bulk mode (COPY) and the catalog/workload CLI commands against a real PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from stack.catalog.migrate import apply_migrations
from stack.cli import app
from stack.workload.bulk import bulk_load
from walduck.catalog_reader import visible_partitions

pytestmark = pytest.mark.integration


def test_bulk_load_shared_files(fresh_db, tmp_path: Path) -> None:
    dsn = fresh_db()
    apply_migrations(dsn)
    storage = tmp_path / "storage"
    summary = bulk_load(
        dsn, "timestore", storage, datasets=4, partitions=20_000, days=7, files="shared", seed=1
    )
    assert summary.partitions == 20_000 and summary.manifests == 28 and summary.links_made == 20_000
    with psycopg.connect(dsn) as conn:
        counts = conn.execute(
            """SELECT (SELECT COUNT(*) FROM timestore.datasets),
                      (SELECT COUNT(*) FROM timestore.dataset_partitions),
                      (SELECT COUNT(*) FROM timestore.dataset_manifests WHERE status = 'published'
                          AND published_at IS NOT NULL)"""
        ).fetchone()
        assert counts == (4, 20_000, 28)
        mismatched = conn.execute(
            """SELECT COUNT(*) FROM timestore.dataset_manifests m
                 JOIN (SELECT manifest_id, COUNT(*) c, SUM(row_count) r, SUM(file_size_bytes) b
                         FROM timestore.dataset_partitions GROUP BY manifest_id) p ON p.manifest_id = m.id
                WHERE (m.partition_count, m.total_rows, m.total_bytes) <> (p.c, p.r, p.b)"""
        ).fetchone()
        assert mismatched == (0,)
        sample = conn.execute(
            """SELECT file_path, row_count, file_size_bytes, start_time, end_time, manifest_shard
                 FROM timestore.dataset_partitions ORDER BY id LIMIT 25"""
        ).fetchall()
        visible = visible_partitions(conn)
    assert sum(len(p) for p in visible.values()) == 20_000
    for path, rows, size, start, end, shard in sample:
        file = storage.resolve() / path
        assert os.stat(file).st_nlink > 1
        assert file.stat().st_size == size
        table = pq.read_table(file)
        assert table.num_rows == rows
        assert all(start <= t <= end for t in table.column("timestamp").to_pylist())
        assert start.date().isoformat() == shard


def test_bulk_load_real_and_synthetic_modes(fresh_db, tmp_path: Path) -> None:
    dsn = fresh_db()
    apply_migrations(dsn)
    real = bulk_load(
        dsn, "timestore", tmp_path / "r", datasets=1, partitions=12, days=2, files="real", seed=2
    )
    fake = bulk_load(
        dsn, "timestore", tmp_path / "r", datasets=1, partitions=12, days=2, files="synthetic", seed=2
    )
    assert real.files_written == 12 and fake.links_made == 0
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """SELECT d.slug, p.file_path, p.row_count FROM timestore.dataset_partitions p
                 JOIN timestore.datasets d ON d.id = p.dataset_id"""
        ).fetchall()
    assert len(rows) == 24 and len({r[0] for r in rows}) == 2
    root = (tmp_path / "r").resolve()
    for _, path, count in rows:
        exists = (root / path).exists()
        if exists:
            assert pq.read_metadata(root / path).num_rows == count
    assert sum((root / p).exists() for _, p, _ in rows) == 12


def test_cli_migrate_run_and_bulk(fresh_db, tmp_path: Path) -> None:
    dsn = fresh_db()
    runner = CliRunner()
    first = runner.invoke(app, ["catalog", "migrate", "--pg-dsn", dsn, "--schema", "ts_cli"])
    assert first.exit_code == 0, first.output
    assert "applied 014_timestore_staging_schemas" in first.output
    again = runner.invoke(app, ["catalog", "migrate", "--pg-dsn", dsn, "--schema", "ts_cli"])
    assert again.exit_code == 0 and "up to date" in again.output
    env = {"WALDUCK_CATALOG_SCHEMA": "ts_cli"}
    run = runner.invoke(
        app,
        [
            "workload",
            "run",
            "--pg-dsn",
            dsn,
            "--storage-root",
            str(tmp_path / "s"),
            "--duration",
            "1.5",
            "--rate",
            "20",
        ],
        env=env,
    )
    assert run.exit_code == 0, run.output
    assert "commits" in run.output
    bulk = runner.invoke(
        app,
        [
            "workload",
            "bulk",
            "--pg-dsn",
            dsn,
            "--storage-root",
            str(tmp_path / "s"),
            "--datasets",
            "2",
            "--partitions",
            "100",
            "--days",
            "2",
        ],
        env=env,
    )
    assert bulk.exit_code == 0, bulk.output
    with psycopg.connect(dsn) as conn:
        commits = conn.execute("SELECT COUNT(*) FROM ts_cli.dataset_partitions").fetchone()
        assert commits is not None and commits[0] >= 100
