"""A tiny in-memory model of the Timestore catalog that emits change records like the connector.

Used by the property tests and the integration tests (synthetic workload without PostgreSQL). Each
operation is one of the write shapes of Timestore's catalog write shapes, applied to plain dicts; each transaction becomes
ChangeRecords with full old rows (REPLICA IDENTITY FULL), ``tx_index``/``tx_size`` per Kafka key, and the
``__global__`` key for storage targets and heartbeats. :meth:`CatalogModel.visible` computes the
visible set straight from the final catalog, the ground truth the deltas must reproduce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.compaction import ManifestInfo, partition_entry
from walduck.records import GLOBAL_KEY, ChangeRecord, Kind, Op, Source

BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
OPERATIONS = (
    "create_dataset",
    "append",
    "append",
    "append",
    "append",
    "new_shard_supersede",
    "new_version",
    "retention",
    "compaction",
    "append_then_delete",
    "schema_change",
    "archive",
    "metadata",
    "touch",
    "storage_target",
    "heartbeat",
    "insert_into_superseded",
    "resend",
)
APPEND_HEAVY = ("append",) * 12 + ("compaction", "retention", "new_version", "touch", "heartbeat")


@dataclass
class CatalogModel:
    seed: int = 0
    rng: random.Random = field(init=False)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema_versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    partitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    storage_targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[ChangeRecord] = field(default_factory=list)
    lsn: int = 0x1000000
    counter: int = 0
    clock: datetime = BASE_TIME
    _txs: list[list[ChangeRecord]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # ------------------------------------------------------------------------------ plumbing
    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:06d}"

    def _now(self) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(1, 50))
        return self.clock.isoformat()

    def _commit(self, changes: list[tuple[str, Op, dict | None, dict | None]]) -> None:
        """One transaction: (table, op, old, new) in order -> ChangeRecords."""
        if not changes:
            return
        start = self.lsn
        self.lsn += 0x100 * (len(changes) + 1)
        commit_lsn = self.lsn
        commit_ts = self._now()
        keys: list[str] = []
        for table, _, old, new in changes:
            row = new if new is not None else old
            keys.append(
                GLOBAL_KEY
                if table == "storage_targets"
                else (row["id"] if table == "datasets" else row["dataset_id"])
            )
        sizes = {k: keys.count(k) for k in keys}
        seen: dict[str, int] = {}
        tx: list[ChangeRecord] = []
        xid = 1000 + len(self._txs)
        for i, ((table, op, old, new), key) in enumerate(zip(changes, keys, strict=True)):
            idx = seen.get(key, 0)
            seen[key] = idx + 1
            row = new if new is not None else old
            tx.append(
                ChangeRecord(
                    kind=Kind.CHANGE,
                    source=Source.STREAM,
                    lsn=start + i * 0x100,
                    commit_lsn=commit_lsn,
                    commit_ts=commit_ts,
                    table=table,
                    op=op,
                    key={"id": row["id"]},
                    new=None if new is None else dict(new),
                    old=None if old is None else dict(old),
                    dataset_id=None if key == GLOBAL_KEY else key,
                    xid=xid,
                    tx_index=idx,
                    tx_size=sizes[key],
                    tx_total=len(changes),
                )
            )
        self._txs.append(tx)
        self.records.extend(tx)

    def _touch(self, ds_id: str) -> tuple[str, Op, dict, dict]:
        old = dict(self.datasets[ds_id])
        self.datasets[ds_id]["updated_at"] = self._now()
        return ("datasets", Op.UPDATE, old, dict(self.datasets[ds_id]))

    def _published(self, ds_id: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests.values() if m["dataset_id"] == ds_id and m["status"] == "published"]

    def _parts_of(self, manifest_id: str) -> list[dict[str, Any]]:
        return [p for p in self.partitions.values() if p["manifest_id"] == manifest_id]

    def _pick_dataset(self) -> str | None:
        return self.rng.choice(sorted(self.datasets)) if self.datasets else None

    def _current_svid(self, ds_id: str) -> str:
        versions = [v for v in self.schema_versions.values() if v["dataset_id"] == ds_id]
        return max(versions, key=lambda v: v["version"])["id"]

    def _new_partition(self, manifest: dict[str, Any], day: int | None = None) -> dict[str, Any]:
        part_id = self._id("part")
        if day is None:
            day = int(manifest["manifest_shard"][-2:]) - 1
        start = BASE_TIME + timedelta(days=day, minutes=self.rng.randint(0, 1000))
        meta: dict[str, Any] = {"tableName": self.rng.choice(["records", "records", "metrics"])}
        if self.rng.random() < 0.8:
            meta["schemaVersionId"] = manifest["schema_version_id"]
        row = {
            "id": part_id,
            "dataset_id": manifest["dataset_id"],
            "manifest_id": manifest["id"],
            "manifest_shard": manifest["manifest_shard"],
            "partition_key": {"window": start.date().isoformat()},
            "storage_target_id": "st-timestore-default-local",
            "file_format": "parquet",
            "file_path": f"{manifest['dataset_id']}/window={start.date()}/{part_id}.parquet",
            "file_size_bytes": self.rng.randint(1000, 100000),
            "row_count": self.rng.randint(1, 1000),
            "start_time": start.isoformat(),
            "end_time": (start + timedelta(minutes=5)).isoformat(),
            "checksum": None,
            "metadata": meta,
            "column_statistics": {},
            "column_bloom_filters": {},
            "ingestion_signature": part_id,
            "created_at": self._now(),
        }
        self.partitions[part_id] = row
        return row

    def _new_manifest(self, ds_id: str, shard: str, svid: str, parent: str | None) -> dict[str, Any]:
        version = 1 + max(
            (m["version"] for m in self.manifests.values() if m["dataset_id"] == ds_id), default=0
        )
        row = {
            "id": self._id("dm"),
            "dataset_id": ds_id,
            "version": version,
            "status": "published",
            "schema_version_id": svid,
            "parent_manifest_id": parent,
            "manifest_shard": shard,
            "summary": {},
            "statistics": {},
            "metadata": {"tableName": "records"},
            "partition_count": 0,
            "total_rows": 0,
            "total_bytes": 0,
            "created_by": "tests",
            "created_at": self._now(),
            "updated_at": self._now(),
            "published_at": self._now(),
        }
        self.manifests[row["id"]] = row
        return row

    def _manifest_update(self, manifest_id: str, **changes: Any) -> tuple[str, Op, dict, dict]:
        old = dict(self.manifests[manifest_id])
        self.manifests[manifest_id].update(changes, updated_at=self._now())
        return ("dataset_manifests", Op.UPDATE, old, dict(self.manifests[manifest_id]))

    def _rollup(self, manifest_id: str) -> list[tuple[str, Op, dict, dict]]:
        parts = self._parts_of(manifest_id)
        return [
            self._manifest_update(
                manifest_id,
                partition_count=len(parts),
                total_rows=sum(p["row_count"] for p in parts),
                total_bytes=sum(p["file_size_bytes"] for p in parts),
            ),
            self._manifest_update(
                manifest_id, summary={"lastPartitionId": parts[-1]["id"] if parts else None}
            ),
        ]

    # ------------------------------------------------------------------------------ shapes
    def create_dataset(self) -> str:
        ds_id = self._id("ds")
        row = {
            "id": ds_id,
            "slug": f"slug-{ds_id}",
            "name": f"Dataset {ds_id}",
            "description": None,
            "status": "active",
            "write_format": "parquet",
            "default_storage_target_id": "st-timestore-default-local",
            "metadata": {"iam": {"readScopes": ["timestore:read"]}},
            "created_at": self._now(),
            "updated_at": self._now(),
        }
        self.datasets[ds_id] = row
        self._commit([("datasets", Op.INSERT, None, dict(row))])
        sv = {
            "id": self._id("dsv"),
            "dataset_id": ds_id,
            "version": 1,
            "description": None,
            "schema": {"fields": [{"name": "ts", "type": "timestamp"}]},
            "checksum": "c1",
            "created_at": self._now(),
        }
        self.schema_versions[sv["id"]] = sv
        self._commit([("dataset_schema_versions", Op.INSERT, None, dict(sv))])
        return ds_id

    def append(self, ds_id: str, day: int | None = None) -> str:
        """Ingest flush: append to the shard's published manifest, or create the shard's first one."""
        day = self.rng.randint(0, 4) if day is None else day
        shard = (BASE_TIME + timedelta(days=day)).date().isoformat()
        current = [m for m in self._published(ds_id) if m["manifest_shard"] == shard]
        changes: list[tuple[str, Op, dict | None, dict | None]] = []
        if current:
            manifest = current[0]
        else:
            manifest = self._new_manifest(ds_id, shard, self._current_svid(ds_id), None)
            changes.append(("dataset_manifests", Op.INSERT, None, dict(manifest)))
        part = self._new_partition(manifest, day)
        changes.append(("dataset_partitions", Op.INSERT, None, dict(part)))
        changes += self._rollup(manifest["id"])
        changes.append(self._touch(ds_id))
        self._commit(changes)
        return part["id"]

    def new_version(self, ds_id: str, svid: str | None = None, shard: str | None = None) -> None:
        """createDatasetManifest with a parent: supersede + insert + partitions in one transaction."""
        published = self._published(ds_id)
        if not published:
            return
        parent = self.rng.choice(sorted(published, key=lambda m: m["id"]))
        shard = shard or parent["manifest_shard"]
        changes: list[tuple[str, Op, dict | None, dict | None]] = [
            self._manifest_update(parent["id"], status="superseded")
        ]
        manifest = self._new_manifest(ds_id, shard, svid or parent["schema_version_id"], parent["id"])
        changes.append(("dataset_manifests", Op.INSERT, None, dict(manifest)))
        for _ in range(self.rng.randint(1, 3)):
            changes.append(("dataset_partitions", Op.INSERT, None, dict(self._new_partition(manifest))))
        changes += self._rollup(manifest["id"])
        changes.append(self._touch(ds_id))
        self._commit(changes)

    def new_shard_supersede(self, ds_id: str) -> None:
        """A new shard's manifest whose parent (another shard's published manifest) is superseded."""
        used = {m["manifest_shard"] for m in self._published(ds_id)}
        free = [d for d in range(5, 9) if (BASE_TIME + timedelta(days=d)).date().isoformat() not in used]
        if free:
            self.new_version(
                ds_id, shard=(BASE_TIME + timedelta(days=self.rng.choice(free))).date().isoformat()
            )

    def _replace(self, manifest_id: str, remove: list[str], add: int) -> None:
        """replacePartitionsInManifest: DELETE remove + INSERT add, rollups, touch."""
        manifest = self.manifests[manifest_id]
        changes: list[tuple[str, Op, dict | None, dict | None]] = []
        for part_id in remove:
            changes.append(("dataset_partitions", Op.DELETE, self.partitions.pop(part_id), None))
        for _ in range(add):
            changes.append(("dataset_partitions", Op.INSERT, None, dict(self._new_partition(manifest))))
        changes += self._rollup(manifest_id)
        changes.append(self._touch(manifest["dataset_id"]))
        self._commit(changes)

    def retention(self, ds_id: str) -> None:
        for manifest in self._published(ds_id):
            parts = self._parts_of(manifest["id"])
            if parts:
                self._replace(manifest["id"], [p["id"] for p in parts[: self.rng.randint(1, len(parts))]], 0)
                return

    def compaction(self, ds_id: str) -> None:
        for manifest in self._published(ds_id):
            parts = self._parts_of(manifest["id"])
            if len(parts) >= 2:
                self._replace(manifest["id"], [p["id"] for p in parts[: self.rng.randint(2, len(parts))]], 1)
                return

    def append_then_delete(self, ds_id: str) -> None:
        part_id = self.append(ds_id)
        self._replace(self.partitions[part_id]["manifest_id"], [part_id], 0)

    def schema_change(self, ds_id: str) -> None:
        versions = [v for v in self.schema_versions.values() if v["dataset_id"] == ds_id]
        sv = {
            "id": self._id("dsv"),
            "dataset_id": ds_id,
            "version": 1 + max(v["version"] for v in versions),
            "description": None,
            "schema": {
                "fields": [
                    {"name": "ts", "type": "timestamp"},
                    {"name": f"c{self.counter}", "type": "double"},
                ]
            },
            "checksum": f"c{self.counter}",
            "created_at": self._now(),
        }
        self.schema_versions[sv["id"]] = sv
        self._commit([("dataset_schema_versions", Op.INSERT, None, dict(sv))])
        self.new_version(ds_id, svid=sv["id"])

    def _dataset_update(self, ds_id: str, **changes: Any) -> None:
        old = dict(self.datasets[ds_id])
        self.datasets[ds_id].update(changes, updated_at=self._now())
        self._commit([("datasets", Op.UPDATE, old, dict(self.datasets[ds_id]))])

    def archive(self, ds_id: str) -> None:
        self._dataset_update(
            ds_id, status="inactive" if self.datasets[ds_id]["status"] == "active" else "active"
        )

    def metadata(self, ds_id: str) -> None:
        self._dataset_update(
            ds_id,
            name=f"Renamed {self.counter}",
            metadata={"iam": {"readScopes": [f"scope-{self.counter}"]}, "defaultTimestampColumn": "ts"},
        )

    def touch(self, ds_id: str) -> None:
        self._commit([self._touch(ds_id)])

    def storage_target(self) -> None:
        target_id = "st-timestore-default-local"
        old = self.storage_targets.get(target_id)
        row = {
            "id": target_id,
            "name": "timestore-default-local",
            "kind": "local",
            "description": None,
            "config": {"root": f"/data/{self.counter}"},
            "created_at": BASE_TIME.isoformat(),
            "updated_at": self._now(),
        }
        self.storage_targets[target_id] = row
        self._commit([("storage_targets", Op.UPDATE if old else Op.INSERT, old, dict(row))])

    def insert_into_superseded(self, ds_id: str) -> None:
        """/sql/exec-style insert into a superseded manifest: invisible."""
        old = [m for m in self.manifests.values() if m["dataset_id"] == ds_id and m["status"] == "superseded"]
        if old:
            manifest = self.rng.choice(sorted(old, key=lambda m: m["id"]))
            self._commit([("dataset_partitions", Op.INSERT, None, dict(self._new_partition(manifest)))])

    def heartbeat(self) -> None:
        self.lsn += 0x100
        self.records.append(
            ChangeRecord(
                kind=Kind.HEARTBEAT,
                source=Source.STREAM,
                lsn=self.lsn,
                commit_lsn=self.lsn,
                commit_ts=self._now(),
            )
        )

    def resend(self) -> None:
        """The connector restarted: the last transactions are published again, same LSNs."""
        for tx in self._txs[-self.rng.randint(1, 3) :]:
            self.records.extend(tx)

    def step(self, op: str) -> None:
        if op == "create_dataset" or (not self.datasets and op not in ("heartbeat", "storage_target")):
            self.create_dataset()
            return
        if op in ("heartbeat", "storage_target", "resend"):
            getattr(self, op)()
            return
        ds_id = self._pick_dataset()
        assert ds_id is not None
        getattr(self, op)(ds_id)

    def run(self, ops: list[str]) -> None:
        for op in ops:
            self.step(op)

    # ------------------------------------------------------------------------------ truth
    def visible(self) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """The visible set from the final catalog: partitions of each published manifest."""
        out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for manifest in self.manifests.values():
            if manifest["status"] != "published":
                continue
            info = ManifestInfo(
                manifest["dataset_id"], manifest["manifest_shard"], "published", manifest["schema_version_id"]
            )
            parts = {p["id"]: partition_entry(p, info) for p in self._parts_of(manifest["id"])}
            if parts:
                out[(manifest["dataset_id"], manifest["manifest_shard"])] = parts
        return out
