"""The catalog workload generator: real Parquet files + Timestore's exact transaction shapes.

Over 500 lines: the catalog operations (ingest, retention, compaction, schema change, archive) share one connection, its file templates and its bookkeeping.

Determinism: the choice RNG is seeded with ``seed`` (``run(seed=…)`` reseeds it); ids come from an
:class:`~stack.workload.naming.IdFactory` seeded with ``seed`` and salted with the catalog's
current manifest/partition count, so a fresh catalog always gets the same ids and a re-run on a
populated catalog cannot collide with earlier ids.

Two file modes (``Workload(files=…)``); the catalog transactions are the same in both:

* ``real`` (default): every new partition gets a freshly written Parquet file with its own rows.
* ``linked``: for high commit rates (``walduck bench freshness``). Each (schema, day) gets a few template
  files written once under ``_templates/``; a new partition's Timestore-style path is a **hard link** to one
  of them, and its catalog row (rows, size, checksum, time range, column statistics) describes that real
  file. A compaction's merged file is written once per distinct group of source files (keyed by their
  inodes) and linked after that, so it always holds exactly the sources' rows. The ingestion signature is
  salted with the partition id (partitions linked to one template would otherwise share it).

``owns_datasets=True`` lets a workload that is the only writer of its datasets keep the dataset and
schema-version rows it read in memory, and the published manifest of a shard until it next writes to
that dataset (fewer reads per commit; the transactions are unchanged).
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row

from stack.workload import transactions as tx
from stack.workload.naming import (
    IdFactory,
    choose_weighted,
    ingestion_signature,
    partition_file_path,
    schema_checksum,
)
from stack.workload.parquet_files import WrittenFile, merge_files, synthetic_table, write_table
from walduck.timeutil import iso, utcnow

DEFAULT_STORAGE_TARGET_ID = "st-timestore-default-local"
DEFAULT_STORAGE_TARGET_NAME = "timestore-default-local"
DEFAULT_FIELDS: list[dict[str, str]] = [
    {"name": "timestamp", "type": "timestamp"},
    {"name": "site", "type": "string"},
    {"name": "value", "type": "double"},
]
EXTRA_COLUMN_TYPES = ("double", "string", "integer", "boolean")
MAX_EXTRA_COLUMNS = 4
DEFAULT_MIX: dict[str, float] = {
    "ingest": 0.70,
    "new_manifest_version": 0.04,
    "retention": 0.06,
    "compaction": 0.08,
    "schema_change": 0.03,
    "metadata_change": 0.07,
    "archive": 0.02,
}
# every transaction shape, ingestion-heavy: the mix the fault suite, the e2e tests and the failover bench run
ALL_SHAPES_MIX: dict[str, float] = {
    "ingest": 5,
    "new_manifest_version": 1,
    "retention": 1,
    "compaction": 1,
    "schema_change": 0.5,
    "metadata_change": 0.5,
    "archive": 0.2,
}
WORKLOAD_CREATED_BY = "walduck-workload"
FILE_MODES = ("real", "linked")
# linked mode: template files per (schema, day), rows per template
LINKED_TEMPLATES_PER_DAY = 4
LINKED_TEMPLATE_ROWS = 100


@dataclass(slots=True)
class OpResult:
    """What one shape did. ``transactions`` = PostgreSQL commits it made; ``lsn`` = WAL end after them."""

    shape: str
    dataset_id: str
    transactions: int = 1
    manifest_id: str | None = None
    manifest_shard: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    superseded_manifest_id: str | None = None
    schema_version_id: str | None = None
    rows: int = 0
    lsn: int = 0


@dataclass(slots=True)
class RunSummary:
    commits: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    partitions_added: int = 0
    partitions_removed: int = 0
    rows_written: int = 0
    elapsed_s: float = 0.0
    first_lsn: int = 0
    last_lsn: int = 0
    dataset_ids: list[str] = field(default_factory=list)

    @property
    def commit_rate(self) -> float:
        return self.commits / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


@dataclass(slots=True, frozen=True)
class _Template:
    """A real Parquet file partitions are hard-linked to (linked mode), with the time range of its rows."""

    written: WrittenFile
    start: datetime
    end: datetime


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dest)


class Workload:
    def __init__(
        self,
        dsn: str,
        schema: str = "timestore",
        storage_root: str | Path = ".walduck/storage",
        seed: int = 0,
        base_day: date = date(2024, 1, 1),
        storage_target_id: str = DEFAULT_STORAGE_TARGET_ID,
        file_delete_grace_s: float = 0.0,
        files: str = "real",
        owns_datasets: bool = False,
    ) -> None:
        if files not in FILE_MODES:
            raise ValueError(f"files must be one of {FILE_MODES}")
        self.dsn = dsn
        self.files = files
        self.owns_datasets = owns_datasets
        self._templates: dict[tuple[str, date], list[_Template]] = {}
        self._merged: dict[tuple[str, tuple[int, ...]], WrittenFile] = {}
        self._template_generation = 0
        self.links_made = 0
        self.files_written = 0
        self._ds_cache: dict[str, dict[str, Any]] = {}
        self._schema_cache: dict[str, dict[str, Any]] = {}
        self._manifest_cache: dict[tuple[str, str], dict[str, Any] | None] = {}
        # Timestore deletes retention/compaction files after the commit (compaction: after the whole job);
        # a grace > 0 models a lifecycle that keeps them that long for readers still on the previous state
        self.file_delete_grace_s = file_delete_grace_s
        self._pending_deletes: list[threading.Timer] = []
        self.schema = schema
        self.storage_root = Path(storage_root).resolve()
        self.seed = seed
        self.base_day = base_day
        self.storage_target_id = storage_target_id
        self.rng = random.Random(seed)
        self.conn = tx.connect_catalog(dsn, schema)
        salt_row = self.conn.execute(
            "SELECT (SELECT COUNT(*) FROM dataset_manifests) || ':' || (SELECT COUNT(*) FROM dataset_partitions)"
        ).fetchone()
        salt = str(salt_row[0]) if salt_row else ""
        self.ids = IdFactory(seed, "" if salt == "0:0" else salt)
        self._target_ready = False

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        for timer in self._pending_deletes:
            timer.cancel()
            timer.function(*timer.args)  # delete now: nothing is left behind
        self._pending_deletes.clear()
        self.conn.close()

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    def _one(self, query: str, params: list[Any]) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchone()

    def _all(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        cached = self._ds_cache.get(dataset_id)
        if cached is not None:
            return cached
        row = self._one("SELECT id, slug, status, metadata FROM datasets WHERE id = %s", [dataset_id])
        if row is None:
            raise LookupError(f"dataset {dataset_id} not found")
        if self.owns_datasets:
            self._ds_cache[dataset_id] = row
        return row

    def current_schema(self, dataset_id: str) -> dict[str, Any]:
        cached = self._schema_cache.get(dataset_id)
        if cached is not None:
            return cached
        row = self._one(
            """SELECT id, version, schema, checksum FROM dataset_schema_versions
                WHERE dataset_id = %s ORDER BY version DESC LIMIT 1""",
            [dataset_id],
        )
        if row is None:
            raise LookupError(f"dataset {dataset_id} has no schema version")
        if self.owns_datasets:
            self._schema_cache[dataset_id] = row
        return row

    def published_manifest(self, dataset_id: str, shard: str) -> dict[str, Any] | None:
        key = (dataset_id, shard)
        if key in self._manifest_cache:
            return self._manifest_cache[key]
        row = self._one(
            """SELECT m.id, m.version, m.schema_version_id, m.partition_count, s.schema AS schema
                 FROM dataset_manifests m LEFT JOIN dataset_schema_versions s ON s.id = m.schema_version_id
                WHERE m.dataset_id = %s AND m.manifest_shard = %s AND m.status = 'published'""",
            [dataset_id, shard],
        )
        if self.owns_datasets:
            self._manifest_cache[key] = row
        return row

    def _wrote(self, dataset_id: str, dataset_row: bool = False, schema: bool = False) -> None:
        """Forget what ``owns_datasets`` kept of a dataset this workload just changed."""
        if not self.owns_datasets:
            return
        for key in [k for k in self._manifest_cache if k[0] == dataset_id]:
            del self._manifest_cache[key]
        if dataset_row:
            self._ds_cache.pop(dataset_id, None)
        if schema:
            self._schema_cache.pop(dataset_id, None)

    def manifest_partitions(self, manifest_id: str) -> list[dict[str, Any]]:
        return self._all(
            """SELECT id, start_time, end_time, file_path, row_count, file_size_bytes, metadata
                 FROM dataset_partitions WHERE manifest_id = %s ORDER BY start_time, id""",
            [manifest_id],
        )

    def published_shards(self, dataset_id: str) -> list[dict[str, Any]]:
        return self._all(
            """SELECT id, manifest_shard, partition_count FROM dataset_manifests
                WHERE dataset_id = %s AND status = 'published' ORDER BY manifest_shard""",
            [dataset_id],
        )

    # ------------------------------------------------------------------ helpers
    def _lsn(self) -> int:
        return tx.current_lsn(self.conn)

    def day(self, index: int) -> date:
        return self.base_day + timedelta(days=index)

    def ensure_storage_target(self) -> str:
        if not self._target_ready:
            self.storage_root.mkdir(parents=True, exist_ok=True)
            tx.upsert_storage_target(
                self.conn, self.storage_target_id, DEFAULT_STORAGE_TARGET_NAME, str(self.storage_root)
            )
            self._target_ready = True
        return self.storage_target_id

    def _window(self, day: date) -> tuple[datetime, datetime]:
        day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        start = day_start + timedelta(seconds=self.rng.randint(0, 23 * 3600))
        end = start + timedelta(seconds=self.rng.randint(60, 3600))
        return start, min(end, day_start + timedelta(days=1) - timedelta(microseconds=1))

    def _write_partition(
        self, dataset: Mapping[str, Any], schema_row: Mapping[str, Any], day: date, rows: int | None
    ) -> tx.PartitionSpec:
        fields = schema_row["schema"]["fields"]
        partition_id = self.ids.new("partition")
        key = {"dataset": dataset["slug"], "window": day.isoformat()}
        file_path = partition_file_path(dataset["slug"], key, partition_id)
        if self.files == "linked":
            template = self._link_template(schema_row, day, self.storage_root / file_path)
            written, start, end = template.written, template.start, template.end
            row_hash = f"{written.row_hash}:{partition_id}"  # one ingestion request per partition
        else:
            start, end = self._window(day)
            n = rows if rows is not None else self.rng.randint(20, 200)
            written = write_table(
                synthetic_table(fields, n, start, end, self.rng), self.storage_root / file_path, fields
            )
            self.files_written += 1
            row_hash = written.row_hash
        signature = ingestion_signature(
            dataset["id"], dataset["slug"], schema_row["checksum"], key, iso(start), iso(end), row_hash
        )
        return self._partition_spec(
            partition_id, dataset["id"], key, file_path, written, start, end, schema_row, ingestion=signature
        )

    def _partition_spec(
        self,
        partition_id: str,
        dataset_id: str,
        key: dict[str, str],
        file_path: str,
        written: WrittenFile,
        start: datetime,
        end: datetime,
        schema_row: Mapping[str, Any],
        *,
        lifecycle: dict[str, Any] | None = None,
        ingestion: str | None = None,
    ) -> tx.PartitionSpec:
        """The catalog row of a partition whose file was just ``written`` (under the default storage target,
        table ``records`` of schema version ``schema_row``); ``lifecycle`` joins its metadata when given."""
        metadata: dict[str, Any] = {"tableName": "records", "schemaVersionId": schema_row["id"]}
        if lifecycle is not None:
            metadata["lifecycle"] = lifecycle
        return tx.PartitionSpec(
            id=partition_id,
            dataset_id=dataset_id,
            partition_key=key,
            storage_target_id=self.ensure_storage_target(),
            file_path=file_path,
            file_size_bytes=written.file_size_bytes,
            row_count=written.row_count,
            start_time=start,
            end_time=end,
            checksum=written.checksum,
            metadata=metadata,
            column_statistics=written.column_statistics,
            ingestion_signature=ingestion,
        )

    def _template_dir(self) -> Path:
        return self.storage_root / "_templates" / str(self.seed)

    def _write_templates(self, schema_row: Mapping[str, Any], day: date) -> list[_Template]:
        fields = schema_row["schema"]["fields"]
        day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        step = 24 // LINKED_TEMPLATES_PER_DAY
        out = []
        for j in range(LINKED_TEMPLATES_PER_DAY):
            start = day_start + timedelta(hours=j * step)
            end = start + timedelta(minutes=59)
            path = (
                self._template_dir()
                / f"{schema_row['checksum'][:16]}"
                / f"window={day.isoformat()}"
                / f"t{j}-g{self._template_generation}.parquet"
            )
            written = write_table(
                synthetic_table(fields, LINKED_TEMPLATE_ROWS, start, end, self.rng), path, fields
            )
            self.files_written += 1
            out.append(_Template(written, start, end))
        return out

    def _link_template(self, schema_row: Mapping[str, Any], day: date, dest: Path) -> _Template:
        key = (str(schema_row["checksum"]), day)
        templates = self._templates.get(key)
        if templates is None:
            templates = self._templates[key] = self._write_templates(schema_row, day)
        index = self.rng.randrange(len(templates))
        try:
            _link(templates[index].written.path, dest)
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            # the file system's link limit per file: fresh templates for this (schema, day)
            self._template_generation += 1
            templates = self._templates[key] = self._write_templates(schema_row, day)
            _link(templates[index].written.path, dest)
        self.links_made += 1
        return templates[index]

    def _merged_file(self, sources: list[Path], fields: list[dict[str, Any]], dest: Path) -> WrittenFile:
        """The compaction of ``sources`` at ``dest``: written (real mode), or linked to the one merged
        file of that exact group of source files, written the first time the group is seen (linked mode)."""
        if self.files != "linked":
            self.files_written += 1
            return write_table(merge_files(sources, fields), dest, fields, row_hash=False)
        key = (schema_checksum(fields), tuple(src.stat().st_ino for src in sources))
        cached = self._merged.get(key)
        if cached is not None:
            try:
                _link(cached.path, dest)
                self.links_made += 1
                return cached
            except OSError as exc:
                if exc.errno not in (errno.EMLINK, errno.ENOENT):
                    raise
        path = self._template_dir() / "merged" / f"{self.ids.uuid()}.parquet"
        written = write_table(merge_files(sources, fields), path, fields, row_hash=False)
        self.files_written += 1
        self._merged[key] = written
        _link(path, dest)
        self.links_made += 1
        return written

    def _summary_patch(self, part: tx.PartitionSpec, schema_version_id: str) -> dict[str, Any]:
        return {
            "batchRowCount": part.row_count,
            "tableName": "records",
            "lastPartitionId": part.id,
            "lastIngestedAt": iso(utcnow()),
            "schemaVersionId": schema_version_id,
        }

    def _metadata_base(self, schema_version_id: str) -> dict[str, Any]:
        return {
            "tableName": "records",
            "storageTargetId": self.storage_target_id,
            "schemaVersionId": schema_version_id,
        }

    def _delete_files(self, rows: list[dict[str, Any]]) -> None:
        paths = [self.storage_root / row["file_path"] for row in rows]
        if self.file_delete_grace_s <= 0:
            _unlink_all(paths)
            return
        self._pending_deletes = [t for t in self._pending_deletes if t.is_alive()]
        timer = threading.Timer(self.file_delete_grace_s, _unlink_all, args=(paths,))
        timer.daemon = True
        timer.start()
        self._pending_deletes.append(timer)

    # ------------------------------------------------------------------ shapes
    def create_dataset(
        self,
        slug: str,
        read_scopes: list[str] | None = None,
        fields: list[dict[str, str]] | None = None,
        name: str | None = None,
    ) -> OpResult:
        """``INSERT datasets`` (autocommit) then the first schema version (autocommit): 2 commits."""
        target = self.ensure_storage_target()
        dataset_id = self.ids.new("dataset")
        metadata: dict[str, Any] = {"createdBy": WORKLOAD_CREATED_BY, "defaultTimestampColumn": "timestamp"}
        if read_scopes is not None:
            metadata["iam"] = {"readScopes": list(read_scopes)}
        tx.insert_dataset(self.conn, dataset_id, slug, name or slug, target, metadata)
        version = self.add_schema_version(dataset_id, list(fields or DEFAULT_FIELDS))
        return OpResult(
            "create_dataset",
            dataset_id,
            transactions=2,
            schema_version_id=version.schema_version_id,
            lsn=version.lsn,
        )

    def add_schema_version(self, dataset_id: str, fields: list[dict[str, str]]) -> OpResult:
        """``INSERT dataset_schema_versions`` (autocommit; version = MAX+1 read outside a transaction)."""
        version = tx.next_schema_version(self.conn, dataset_id)
        schema_version_id = self.ids.new("schema_version")
        tx.insert_schema_version(
            self.conn, schema_version_id, dataset_id, version, fields, schema_checksum(fields)
        )
        self._wrote(dataset_id, schema=True)
        return OpResult("schema_version", dataset_id, schema_version_id=schema_version_id, lsn=self._lsn())

    def ingest(self, dataset_id: str, day: date | int | None = None, rows: int | None = None) -> OpResult:
        """Write one Parquet file, then append it to the shard's published manifest (``append``) or,
        when the shard has none, create the shard's first manifest (``new_shard``)."""
        day = self._resolve_day(day)
        dataset = self.dataset(dataset_id)
        schema_row = self.current_schema(dataset_id)
        shard = day.isoformat()
        manifest = self.published_manifest(dataset_id, shard)
        if manifest is None:
            return self._new_manifest(dataset, schema_row, day, rows, parent=None, shape="new_shard")
        part = self._write_partition(dataset, schema_row, day, rows)
        metadata = self._metadata_base(schema_row["id"])
        if manifest["schema_version_id"] != schema_row["id"]:
            before = {f["name"] for f in (manifest["schema"] or {}).get("fields", [])}
            added_cols = [f for f in schema_row["schema"]["fields"] if f["name"] not in before]
            metadata["schemaEvolution"] = {
                "status": "applied",
                "addedColumns": added_cols,
                "requestedBackfill": False,
            }
        result = tx.replace_partitions_in_manifest(
            self.conn,
            dataset_id,
            manifest["id"],
            remove_ids=[],
            add=[part],
            summary_patch=self._summary_patch(part, schema_row["id"]),
            metadata_patch=metadata,
            schema_version_id=schema_row["id"],
        )
        self._wrote(dataset_id)
        return OpResult(
            "append",
            dataset_id,
            manifest_id=result["manifest_id"],
            manifest_shard=shard,
            added=[part.id],
            schema_version_id=schema_row["id"],
            rows=part.row_count,
            lsn=self._lsn(),
        )

    def new_manifest_version(
        self, dataset_id: str, day: date | int | None = None, rows: int | None = None
    ) -> OpResult:
        """A new manifest version for an existing shard: supersede the published one, publish a new
        manifest carrying only the new partition (the superseded manifest keeps its rows)."""
        day = self._resolve_day(day)
        dataset = self.dataset(dataset_id)
        schema_row = self.current_schema(dataset_id)
        parent = self.published_manifest(dataset_id, day.isoformat())
        return self._new_manifest(
            dataset,
            schema_row,
            day,
            rows,
            parent=parent["id"] if parent else None,
            shape="new_manifest_version",
        )

    def _new_manifest(
        self,
        dataset: Mapping[str, Any],
        schema_row: Mapping[str, Any],
        day: date,
        rows: int | None,
        parent: str | None,
        shape: str,
    ) -> OpResult:
        part = self._write_partition(dataset, schema_row, day, rows)
        version = tx.next_manifest_version(self.conn, dataset["id"])
        manifest_id = self.ids.new("manifest")
        tx.create_dataset_manifest(
            self.conn,
            manifest_id,
            dataset["id"],
            version,
            day.isoformat(),
            schema_row["id"],
            parent,
            [part],
            summary=self._summary_patch(part, schema_row["id"]),
            metadata=self._metadata_base(schema_row["id"]),
        )
        self._wrote(dataset["id"])
        return OpResult(
            shape,
            dataset["id"],
            manifest_id=manifest_id,
            manifest_shard=day.isoformat(),
            added=[part.id],
            superseded_manifest_id=parent,
            schema_version_id=schema_row["id"],
            rows=part.row_count,
            lsn=self._lsn(),
        )

    def retention(self, dataset_id: str, day: date | int | None = None, count: int = 1) -> OpResult:
        """Hard-delete the ``count`` oldest (by end_time) partitions of a shard's manifest in one
        transaction, then delete their files."""
        shard = self._pick_shard(dataset_id, day, min_partitions=1)
        if shard is None:
            raise LookupError(f"dataset {dataset_id} has no partition to expire")
        parts = sorted(self.manifest_partitions(shard["id"]), key=lambda r: (r["end_time"], r["id"]))[:count]
        ids = [p["id"] for p in parts]
        now = iso(utcnow())
        tx.replace_partitions_in_manifest(
            self.conn,
            dataset_id,
            shard["id"],
            remove_ids=ids,
            add=[],
            summary_patch={
                "lifecycle": {
                    "retention": {"appliedAt": now, "removedPartitionIds": ids, "policy": {"mode": "time"}}
                }
            },
            metadata_patch={
                "lifecycle": {
                    "retention": {
                        "appliedAt": now,
                        "previousManifestId": shard["id"],
                        "removedCount": len(ids),
                    }
                }
            },
        )
        self._wrote(dataset_id)
        lsn = self._lsn()
        self._delete_files(parts)
        return OpResult(
            "retention",
            dataset_id,
            manifest_id=shard["id"],
            manifest_shard=shard["manifest_shard"],
            removed=ids,
            lsn=lsn,
        )

    def compaction(self, dataset_id: str, day: date | int | None = None, max_group: int = 4) -> OpResult:
        """Merge up to ``max_group`` adjacent partitions of a shard: write the merged file first, then
        DELETE N + INSERT 1 + 2 manifest UPDATEs + dataset UPDATE in one transaction, then delete sources."""
        shard = self._pick_shard(dataset_id, day, min_partitions=2)
        if shard is None:
            raise LookupError(f"dataset {dataset_id} has no shard with 2+ partitions")
        dataset = self.dataset(dataset_id)
        schema_row = self.current_schema(dataset_id)
        sources = self.manifest_partitions(shard["id"])
        size = min(len(sources), max(2, max_group))
        first = self.rng.randint(0, len(sources) - size)
        group = sources[first : first + size]
        fields = schema_row["schema"]["fields"]
        start, end = min(p["start_time"] for p in group), max(p["end_time"] for p in group)
        partition_id = self.ids.new("partition")
        key = {"compacted_range": f"{iso(start)}__{iso(end)}", "partition_count": str(len(group))}
        file_path = partition_file_path(dataset["slug"], key, partition_id)
        written = self._merged_file(
            [self.storage_root / p["file_path"] for p in group], fields, self.storage_root / file_path
        )
        chunk_id = f"chunk-{self.ids.uuid()}"
        compacted = {"chunkId": chunk_id, "attempt": 1, "sourcePartitionIds": [p["id"] for p in group]}
        part = self._partition_spec(
            partition_id,
            dataset_id,
            key,
            file_path,
            written,
            start,
            end,
            schema_row,
            lifecycle={"compaction": compacted},
        )
        now = iso(utcnow())
        removed = [p["id"] for p in group]
        tx.replace_partitions_in_manifest(
            self.conn,
            dataset_id,
            shard["id"],
            remove_ids=removed,
            add=[part],
            summary_patch={
                "lifecycle": {"compaction": {"appliedAt": now, "compactedPartitions": len(group)}}
            },
            metadata_patch={"lifecycle": {"compaction": {"appliedAt": now, "chunkId": chunk_id}}},
        )
        self._wrote(dataset_id)
        lsn = self._lsn()
        self._delete_files(group)
        return OpResult(
            "compaction",
            dataset_id,
            manifest_id=shard["id"],
            manifest_shard=shard["manifest_shard"],
            added=[partition_id],
            removed=removed,
            rows=written.row_count,
            lsn=lsn,
        )

    def schema_change(
        self, dataset_id: str, column: str | None = None, column_type: str | None = None
    ) -> OpResult:
        """Additive evolution: a new schema version with one more column (autocommit insert)."""
        fields = list(self.current_schema(dataset_id)["schema"]["fields"])
        extras = len(fields) - len(DEFAULT_FIELDS)
        name = column or f"extra_{extras + 1}"
        kind = column_type or EXTRA_COLUMN_TYPES[extras % len(EXTRA_COLUMN_TYPES)]
        result = self.add_schema_version(dataset_id, [*fields, {"name": name, "type": kind}])
        result.shape = "schema_change"
        return result

    def archive_dataset(self, dataset_id: str) -> OpResult:
        """``UPDATE datasets SET status='inactive'`` (autocommit)."""
        tx.set_dataset_status(self.conn, dataset_id, "inactive")
        self._wrote(dataset_id, dataset_row=True)
        return OpResult("archive", dataset_id, lsn=self._lsn())

    def change_metadata(self, dataset_id: str, read_scopes: list[str] | None = None) -> OpResult:
        """Admin metadata PATCH (``iam.readScopes``): ``UPDATE datasets`` (autocommit)."""
        scopes = read_scopes if read_scopes is not None else [f"timestore:read:team-{self.rng.randint(1, 5)}"]
        tx.merge_dataset_metadata(self.conn, dataset_id, {"iam": {"readScopes": scopes}})
        self._wrote(dataset_id, dataset_row=True)
        return OpResult("metadata_change", dataset_id, lsn=self._lsn())

    # ------------------------------------------------------------------ selection
    def _resolve_day(self, day: date | int | None, days: int = 3) -> date:
        if isinstance(day, date):
            return day
        return self.day(day if day is not None else self.rng.randrange(days))

    def _pick_shard(
        self, dataset_id: str, day: date | int | None, min_partitions: int
    ) -> dict[str, Any] | None:
        shards = [s for s in self.published_shards(dataset_id) if s["partition_count"] >= min_partitions]
        if day is not None:
            wanted = self._resolve_day(day).isoformat()
            shards = [s for s in shards if s["manifest_shard"] == wanted]
        return self.rng.choice(shards) if shards else None

    def ensure_datasets(self, count: int) -> list[str]:
        """The ``count`` workload datasets of this seed (``workload-<seed>.sensors_<i>``), created when missing."""
        ids: list[str] = []
        for i in range(count):
            slug = f"workload-{self.seed}.sensors_{i:03d}"
            row = self._one("SELECT id FROM datasets WHERE slug = %s", [slug])
            ids.append(
                row["id"] if row else self.create_dataset(slug, read_scopes=["timestore:read"]).dataset_id
            )
        return ids

    def step(
        self, dataset_ids: list[str], days: int, partitions_per_shard: int, mix: Mapping[str, float]
    ) -> OpResult:
        """One random shape from ``mix`` (falls back to ``ingest`` when the shape has nothing to act on)."""
        active = [d for d in dataset_ids if self.dataset(d)["status"] == "active"] or dataset_ids
        dataset_id = self.rng.choice(active)
        shape = choose_weighted(self.rng, mix)
        day_index = self.rng.randrange(days)
        if shape == "ingest":
            manifest = self.published_manifest(dataset_id, self.day(day_index).isoformat())
            if manifest is not None and manifest["partition_count"] >= partitions_per_shard:
                shape = self.rng.choice(["compaction", "retention"])
        try:
            if shape == "compaction":
                return self.compaction(dataset_id, day_index if self.rng.random() < 0.5 else None)
            if shape == "retention":
                return self.retention(dataset_id, None, count=self.rng.randint(1, 2))
        except LookupError:
            shape = "ingest"
        if shape == "new_manifest_version" and self.published_manifest(
            dataset_id, self.day(day_index).isoformat()
        ):
            return self.new_manifest_version(dataset_id, day_index)
        if shape == "schema_change":
            extras = len(self.current_schema(dataset_id)["schema"]["fields"]) - len(DEFAULT_FIELDS)
            if extras < MAX_EXTRA_COLUMNS:
                return self.schema_change(dataset_id)
        if shape == "metadata_change":
            return self.change_metadata(dataset_id)
        if shape == "archive" and len(active) - 1 >= max(1, (len(dataset_ids) + 1) // 2):  # keep half active
            return self.archive_dataset(dataset_id)
        return self.ingest(dataset_id, day_index)

    def run(
        self,
        datasets: int = 3,
        days: int = 3,
        partitions_per_shard: int = 8,
        rate: float = 5.0,
        duration: float = 10.0,
        seed: int | None = None,
        mix: Mapping[str, float] | None = None,
        max_commits: int | None = None,
        on_progress: Callable[[RunSummary], None] | None = None,
    ) -> RunSummary:
        """Drive a deterministic random mix of shapes at ``rate`` commits/s for ``duration`` seconds
        (``rate <= 0``: as fast as possible). Stops early after ``max_commits`` commits."""
        if seed is not None:
            self.rng.seed(seed)
        summary = RunSummary(first_lsn=self._lsn())
        summary.dataset_ids = self.ensure_datasets(datasets)
        weights = dict(mix or DEFAULT_MIX)
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= duration or (max_commits is not None and summary.commits >= max_commits):
                break
            result = self.step(summary.dataset_ids, days, partitions_per_shard, weights)
            summary.commits += result.transactions
            summary.operations[result.shape] = summary.operations.get(result.shape, 0) + 1
            summary.partitions_added += len(result.added)
            summary.partitions_removed += len(result.removed)
            if result.shape in ("append", "new_shard", "new_manifest_version"):
                summary.rows_written += result.rows
            summary.last_lsn = result.lsn or summary.last_lsn
            if on_progress is not None:
                on_progress(summary)
            if rate > 0:
                wait = started + summary.commits / rate - time.monotonic()
                if wait > 0:
                    time.sleep(min(wait, max(0.0, duration - (time.monotonic() - started))))
        summary.elapsed_s = time.monotonic() - started
        summary.last_lsn = summary.last_lsn or self._lsn()
        return summary
