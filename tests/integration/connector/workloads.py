"""Deterministic catalog workloads for the connector tests (every Timestore transaction shape)."""

from __future__ import annotations

from pathlib import Path

from stack.workload.generator import Workload


def every_shape(dsn: str, storage_root: Path, seed: int = 7, extra_commits: int = 30) -> int:
    """Create datasets, ingest (new shard + append), new manifest version, compaction, retention, schema
    change, metadata change, archive, then a seeded random mix. Returns the commits made."""
    with Workload(dsn, "timestore", storage_root, seed=seed) as w:
        ids = w.ensure_datasets(3)
        for d in ids:
            w.ingest(d, 0)
            w.ingest(d, 0)
            w.ingest(d, 1)
        w.new_manifest_version(ids[0], 0)
        w.compaction(ids[1], 0)
        w.retention(ids[2], 0, count=1)
        w.schema_change(ids[0])
        w.ingest(ids[0], 1)
        w.change_metadata(ids[1])
        w.archive_dataset(ids[2])
        summary = w.run(datasets=3, days=3, rate=0, duration=120, max_commits=extra_commits, seed=seed + 1)
        return 20 + summary.commits


def random_mix(dsn: str, storage_root: Path, seed: int, duration: float, rate: float = 0.0) -> int:
    with Workload(dsn, "timestore", storage_root, seed=seed) as w:
        return w.run(datasets=4, days=3, rate=rate, duration=duration, seed=seed).commits
