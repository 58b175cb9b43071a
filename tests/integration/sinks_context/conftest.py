"""Hand-built deltas over real Parquet files (pyarrow) for the context-store tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sinks.settings import SinkSettings
from walduck.config import WalduckSettings
from walduck.deltas import Delta, DeltaKind, ShardChange
from walduck.shardkey import shard_for
from walduck.timeutil import iso

BASE = datetime(2024, 1, 1, tzinfo=UTC)
SCHEMA_V1 = {"fields": [{"name": "ts", "type": "timestamp"}, {"name": "value", "type": "double"}]}
SCHEMA_V2 = {"fields": [*SCHEMA_V1["fields"], {"name": "site", "type": "string"}]}


def settings_for(tmp: Path, **kw: Any) -> tuple[SinkSettings, WalduckSettings]:
    wd = WalduckSettings(data_dir=tmp / "data", storage_root=tmp / "storage", topic_partitions=2, **kw)
    return SinkSettings(context_path=tmp / "ctx" / "context.duckdb", view_refresh_interval_s=0.0), wd


class DeltaFactory:
    """Keeps src offsets / LSNs increasing per partition, writes Parquet files under storage_root."""

    def __init__(self, storage_root: Path) -> None:
        self.root = storage_root
        self.root.mkdir(parents=True, exist_ok=True)
        self.src_offset: dict[int, int] = {}
        self.lsn = itertools.count(1000, 10)
        self.ids = itertools.count(1)

    def write_file(self, slug: str, hour: int, rows: int, with_site: bool = False) -> dict[str, Any]:
        pid = f"part-{next(self.ids)}"
        start = BASE + timedelta(hours=hour)
        ts = [start + timedelta(seconds=i) for i in range(rows)]
        cols: dict[str, Any] = {
            "ts": pa.array([t.replace(tzinfo=None) for t in ts], pa.timestamp("us")),
            "value": pa.array([float(hour * 1000 + i) for i in range(rows)]),
        }
        if with_site:
            cols["site"] = pa.array([f"s{i % 3}" for i in range(rows)])
        rel = f"{slug}/{pid}.parquet"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        return {
            "id": pid,
            "dataset_id": f"ds-{slug}",
            "manifest_id": f"dm-{slug}",
            "manifest_shard": shard_for(start),
            "storage_target_id": "st-local",
            "file_path": rel,
            "file_format": "parquet",
            "start_time": iso(start),
            "end_time": iso(ts[-1]),
            "row_count": rows,
            "file_size_bytes": path.stat().st_size,
            "schema_version_id": f"dsv-{slug}-2" if with_site else f"dsv-{slug}-1",
            "table_name": "records",
            "partition_key": {"window": start.strftime("%Y-%m-%dT%H")},
        }

    def delta(
        self,
        partition: int,
        dataset_id: str | None,
        *,
        upserts: list[dict[str, Any]] | None = None,
        deletes: list[str] | None = None,
        dataset: dict[str, Any] | None = None,
        schema_versions: list[dict[str, Any]] | None = None,
        storage_targets: list[dict[str, Any]] | None = None,
        kind: DeltaKind = DeltaKind.DELTA,
    ) -> Delta:
        frm = self.src_offset.get(partition, -1) + 1
        self.src_offset[partition] = frm + 2
        lsn_from = next(self.lsn)
        shards: dict[str, ShardChange] = {}
        for u in upserts or []:
            shards.setdefault(u["manifest_shard"], ShardChange()).upserts.append(u)
        if deletes:
            shards.setdefault("2024-01-01", ShardChange()).deletes.extend(deletes)
        return Delta(
            kind=kind,
            src_partition=partition,
            src_offset_from=frm,
            src_offset_to=frm + 2,
            lsn_from=lsn_from,
            lsn_to=lsn_from + 5,
            commit_ts_max=iso(datetime.now(UTC)),
            dataset_id=dataset_id,
            dataset=dataset,
            schema_versions=schema_versions or [],
            storage_targets=storage_targets or [],
            shards=shards,
        )

    def create_dataset(
        self, partition: int, slug: str, schema: dict[str, Any] = SCHEMA_V1, **meta: Any
    ) -> Delta:
        did = f"ds-{slug}"
        return self.delta(
            partition,
            did,
            dataset={
                "id": did,
                "slug": slug,
                "name": slug.title(),
                "status": "active",
                "write_format": "parquet",
                "metadata": {"iam": {"readScopes": ["timestore:read"]}, **meta},
                "created_at": iso(BASE),
                "updated_at": iso(BASE),
            },
            schema_versions=[{"id": f"dsv-{slug}-1", "dataset_id": did, "version": 1, "schema": schema}],
            storage_targets=[
                {"id": "st-local", "name": "timestore-default-local", "kind": "local", "config": {}}
            ],
        )


# --------------------------------------------------------------------------- fixtures
import pytest  # noqa: E402

from sinks.context.store import ContextStore  # noqa: E402


@pytest.fixture
def ctx_settings(tmp_path: Path) -> tuple[SinkSettings, WalduckSettings]:
    return settings_for(tmp_path)


@pytest.fixture
def factory(ctx_settings: tuple[SinkSettings, WalduckSettings]) -> DeltaFactory:
    return DeltaFactory(ctx_settings[1].storage_root)


@pytest.fixture
def store(ctx_settings: tuple[SinkSettings, WalduckSettings]):
    s = ContextStore(*ctx_settings)
    s.open()
    yield s
    s.close()


class Applier:
    """Applies deltas with increasing deltas-topic offsets per partition."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store
        self.offsets: dict[int, int] = {}

    def __call__(self, delta: Delta, partition: int | None = None) -> bool:
        p = delta.src_partition if partition is None else partition
        off = self.offsets.get(p, -1) + 1
        self.offsets[p] = off
        return self.store.apply(delta, p, off)


@pytest.fixture
def apply(store: ContextStore) -> Applier:
    return Applier(store)
