"""Bulk mode: a large Timestore catalog, fast, with ``COPY``.

Layout: ``datasets`` new datasets (``bulk-<seed>.ds_<n>``, numbered after earlier bulk loads), each with one schema version and one
published manifest per day shard (``days`` days from ``base_day``); ``partitions`` partition rows
spread evenly over the (dataset, day) shards, with correct manifest rollups. One PostgreSQL
transaction per dataset (its manifests + partitions), so a decoder never sees one giant transaction.

``files`` says what ``file_path`` points at; row counts, sizes and time ranges are always those of
the real file the partition's contents come from:

* ``shared`` (default): a few real Parquet files per day (``SHARED_FILES_PER_DAY``, under
  ``_bulk/<seed>/``); each partition gets its own Timestore-style path
  (``<slug>/dataset=<slug>/window=<day>/<partitionId>.parquet``) that is a **hard link** to one
  of them (``uq_dataset_partitions_path`` forbids two partitions sharing a path). Every partition
  file exists and is readable; disk use is one directory entry per partition.
* ``real``: one freshly written Parquet file per partition (slow; for small loads).
* ``synthetic``: the same paths as ``shared`` but no link is made: the files do not exist (readers
  skip missing objects, Timestore's initializeDuckDbDatabase). Fastest; for catalog-only benchmarks.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson

from stack.workload import transactions as tx
from stack.workload.generator import (
    DEFAULT_FIELDS,
    DEFAULT_STORAGE_TARGET_ID,
    DEFAULT_STORAGE_TARGET_NAME,
)
from stack.workload.naming import IdFactory, partition_file_path, schema_checksum
from stack.workload.parquet_files import WrittenFile, synthetic_table, write_table
from walduck.timeutil import iso

SHARED_FILES_PER_DAY = 4
FILE_MODES = ("shared", "real", "synthetic")
ROWS_PER_FILE = 100


@dataclass(slots=True)
class BulkSummary:
    datasets: int
    manifests: int
    partitions: int
    files_written: int
    links_made: int
    elapsed_s: float
    files: str


@dataclass(slots=True, frozen=True)
class _SharedFile:
    written: WrittenFile
    start: datetime
    end: datetime


def _copy_text(value: object) -> str:
    if value is None:
        return r"\N"
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _json(value: object) -> str:
    return _copy_text(orjson.dumps(value).decode())


def _write_shared(root: Path, seed: int, day: date, rng: random.Random) -> list[_SharedFile]:
    out = []
    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    for j in range(SHARED_FILES_PER_DAY):
        start = day_start + timedelta(hours=j * (24 // SHARED_FILES_PER_DAY))
        end = start + timedelta(minutes=59)
        table = synthetic_table(DEFAULT_FIELDS, ROWS_PER_FILE, start, end, rng)
        path = root / "_bulk" / str(seed) / f"window={day.isoformat()}" / f"shared-{j}.parquet"
        out.append(_SharedFile(write_table(table, path, DEFAULT_FIELDS), start, end))
    return out


def bulk_load(
    dsn: str,
    schema: str = "timestore",
    storage_root: str | Path = ".walduck/storage",
    datasets: int = 10,
    partitions: int = 100_000,
    days: int = 30,
    files: str = "shared",
    seed: int = 0,
    base_day: date = date(2024, 1, 1),
    on_progress: Callable[[int], None] | None = None,
) -> BulkSummary:
    """Create ``datasets`` datasets with ``partitions`` partition rows in total (see module doc)."""
    if files not in FILE_MODES:
        raise ValueError(f"files must be one of {FILE_MODES}")
    started = time.monotonic()
    root = Path(storage_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    conn = tx.connect_catalog(dsn, schema)
    salt_row = conn.execute("SELECT COUNT(*) FROM datasets").fetchone()
    ids = IdFactory(seed, f"bulk:{salt_row[0] if salt_row else 0}")
    base_row = conn.execute("SELECT COUNT(*) FROM datasets WHERE slug LIKE %s", [f"bulk-{seed}.%"]).fetchone()
    base = int(base_row[0]) if base_row else 0
    tx.upsert_storage_target(conn, DEFAULT_STORAGE_TARGET_ID, DEFAULT_STORAGE_TARGET_NAME, str(root))
    day_list = [base_day + timedelta(days=d) for d in range(days)]
    shared = {day: _write_shared(root, seed, day, rng) for day in day_list} if files != "real" else {}
    files_written = sum(len(v) for v in shared.values())
    links = 0
    shards = datasets * days
    per_shard, extra = divmod(partitions, shards)
    done = 0
    manifests = 0
    checksum = schema_checksum(DEFAULT_FIELDS)
    published_at = iso(datetime.now(UTC))
    try:
        for i in range(datasets):
            dataset_id = ids.new("dataset")
            slug = f"bulk-{seed}.ds_{base + i:04d}"
            sv_id = ids.new("schema_version")
            man_buf = io.StringIO()
            part_buf = io.StringIO()
            for d, day in enumerate(day_list):
                count = per_shard + (1 if i * days + d < extra else 0)
                if count == 0:
                    continue
                shard = day.isoformat()
                manifest_id = ids.new("manifest")
                key = {"dataset": slug, "window": shard}
                rows_total = bytes_total = 0
                t_min: datetime | None = None
                t_max: datetime | None = None
                for k in range(count):
                    part_id = ids.new("partition")
                    file_path = partition_file_path(slug, key, part_id)
                    target = root / file_path
                    if files == "real":
                        day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
                        start = day_start + timedelta(seconds=rng.randint(0, 23 * 3600))
                        end = start + timedelta(minutes=30)
                        table = synthetic_table(DEFAULT_FIELDS, ROWS_PER_FILE, start, end, rng)
                        info = write_table(table, target, DEFAULT_FIELDS)
                        files_written += 1
                    else:
                        src = shared[day][k % SHARED_FILES_PER_DAY]
                        info, start, end = src.written, src.start, src.end
                        if files == "shared":
                            if k == 0:
                                target.parent.mkdir(parents=True, exist_ok=True)
                            os.link(info.path, target)
                            links += 1
                    rows_total += info.row_count
                    bytes_total += info.file_size_bytes
                    t_min = start if t_min is None or start < t_min else t_min
                    t_max = end if t_max is None or end > t_max else t_max
                    meta = {"tableName": "records", "schemaVersionId": sv_id}
                    part_buf.write(
                        "\t".join(
                            (
                                part_id,
                                dataset_id,
                                manifest_id,
                                shard,
                                _json(key),
                                DEFAULT_STORAGE_TARGET_ID,
                                "parquet",
                                _copy_text(file_path),
                                str(info.file_size_bytes),
                                str(info.row_count),
                                iso(start),
                                iso(end),
                                info.checksum,
                                _json(meta),
                            )
                        )
                        + "\n"
                    )
                manifests += 1
                stats = {
                    "rowCount": rows_total,
                    "fileSizeBytes": bytes_total,
                    "startTime": iso(t_min) if t_min else None,
                    "endTime": iso(t_max) if t_max else None,
                }
                meta = {
                    "tableName": "records",
                    "storageTargetId": DEFAULT_STORAGE_TARGET_ID,
                    "schemaVersionId": sv_id,
                }
                man_buf.write(
                    "\t".join(
                        (
                            manifest_id,
                            dataset_id,
                            str(d + 1),
                            "published",
                            sv_id,
                            shard,
                            _json({"tableName": "records", "schemaVersionId": sv_id}),
                            _json(stats),
                            _json(meta),
                            str(count),
                            str(rows_total),
                            str(bytes_total),
                            "walduck-bulk",
                            published_at,
                        )
                    )
                    + "\n"
                )
                done += count
            with conn.transaction():
                tx.insert_dataset(
                    conn,
                    dataset_id,
                    slug,
                    slug,
                    DEFAULT_STORAGE_TARGET_ID,
                    {"createdBy": "walduck-bulk", "defaultTimestampColumn": "timestamp"},
                )
                tx.insert_schema_version(conn, sv_id, dataset_id, 1, list(DEFAULT_FIELDS), checksum)
                with conn.cursor() as cur:
                    with cur.copy(
                        "COPY dataset_manifests (id, dataset_id, version, status, schema_version_id, manifest_shard,"
                        " summary, statistics, metadata, partition_count, total_rows, total_bytes, created_by, published_at)"
                        " FROM STDIN"
                    ) as copy:
                        copy.write(man_buf.getvalue())
                    with cur.copy(
                        "COPY dataset_partitions (id, dataset_id, manifest_id, manifest_shard, partition_key,"
                        " storage_target_id, file_format, file_path, file_size_bytes, row_count, start_time,"
                        " end_time, checksum, metadata) FROM STDIN"
                    ) as copy:
                        data = part_buf.getvalue()
                        for offset in range(0, len(data), 1 << 20):
                            copy.write(data[offset : offset + (1 << 20)])
                    cur.execute(
                        "UPDATE dataset_manifests SET published_at = NOW() WHERE dataset_id = %s",
                        [dataset_id],
                    )
            if on_progress is not None:
                on_progress(done)
    finally:
        conn.close()
    return BulkSummary(
        datasets=datasets,
        manifests=manifests,
        partitions=done,
        files_written=files_written,
        links_made=links,
        elapsed_s=time.monotonic() - started,
        files=files,
    )
