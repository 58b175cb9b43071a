"""Context snapshots: a replica publishes its context, content-hashed, and a new replica boots from it (issue 15).

A new query replica otherwise builds every shard from PostgreSQL (``build.py``: read 1M partitions, bulk-load
them); with ``WALDUCK_CONTEXT_SNAPSHOT_DIR`` set, a replica whose context is empty loads the newest published
snapshot instead and follows the deltas from the offsets stored in it — the same resume path as a restart.

Layout of the directory (shared by the replicas; it must be writable by the query service only):

=================================  ============================================================================
``objects/<sha256>.parquet``       one table's rows (zstd Parquet), named by the SHA-256 of the file's bytes
``manifests/<time>-<sha12>.json``  one snapshot: each table's object, rows and columns, each shard's progress,
                                   and what it fits (deltas topic and its partitions, storage root, catalog)
``LATEST``                         the newest manifest's name (written to a temporary file, then renamed)
=================================  ============================================================================

**Publish** (:func:`publish`, from a thread of the serving replica; the writer is never held):

1. One DuckDB read transaction on a new cursor: every ``wd`` table but the replica's own rebuild history is
   read at the same MVCC instant, so each shard's progress row (deltas offset, applied LSN) describes exactly
   the rows beside it — the invariant the restart path already relies on.
2. Each table is streamed (Arrow batches) into a temporary Parquet file while its SHA-256 is computed, then
   renamed to ``objects/<sha256>.parquet`` (an object that exists already is kept: same bytes).
3. The manifest is written, then ``LATEST`` is replaced by a rename: a reader sees the old snapshot or the new,
   never a partial one.
4. Old manifests beyond ``keep`` are deleted, then objects no kept manifest names that are older than
   :data:`GC_MIN_AGE_S` (a concurrent publisher's fresh objects are not yet named by its manifest).

**Restore** (:func:`restore`, at open, only into a context that has no bootstrapped shard):

1. ``LATEST`` → manifest; it must fit this replica (:class:`Fit`: same deltas topic and partition count, same
   storage root — partition locations are resolved against it — and catalog schema), and every table's
   columns must equal this version's (``DESCRIBE``); otherwise it is unusable.
2. Every object is read whole and its SHA-256 checked against its name (a truncated or corrupt file is refused).
3. In ONE DuckDB transaction the tables are emptied and filled from the objects; commit.
4. The caller loads the progress rows as at any restart; the deltas consumer then seeks each shard to its
   stored offset + 1. A shard whose offset is below the partition's log start (retention deleted what the
   snapshot needs) or past its end (another topic of that name) is built from PostgreSQL instead
   (``consumer.py`` step 2), so an old or foreign snapshot costs time, never correctness.

What it does not do: authenticate the directory (the hash detects corruption, not a forgery: whoever can write
it can change what a new replica serves, like the context file itself — keep it outside every directory user
SQL may read, :func:`require_outside`, and writable by the service only); copy the plain ``timestore.<view>``
views (refreshed after the restore, in chunks, as after a build); replace the PostgreSQL build for a shard the
snapshot cannot serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.exceptions import ContextError, SnapshotUnusable
from walduck import metrics
from walduck.lsn import format_lsn
from walduck.timeutil import iso, utcnow

log = logging.getLogger(__name__)

FORMAT = 1
LOCAL_TABLES = frozenset({"rebuilds"})  # the replica's own rebuild history: not published
GC_MIN_AGE_S = 600.0
BATCH_ROWS = 122_880


@dataclass(frozen=True)
class Fit:
    """What a snapshot must have been published for, to seed this replica."""

    deltas_topic: str
    topic_partitions: int
    storage_root: str
    catalog_schema: str


@dataclass(frozen=True)
class Published:
    manifest: str
    path: Path
    tables: dict[str, int]  # table -> rows
    seconds: float
    bytes_written: int


def require_outside(directory: Path, readable: list[str]) -> None:
    """Refuse a snapshot directory user SQL could read (inside the storage root or an allowed directory)."""
    d = directory.resolve()
    for r in readable:
        root = Path(r).resolve()
        if d == root or root in d.parents:
            raise ContextError(
                f"WALDUCK_CONTEXT_SNAPSHOT_DIR {d} lies inside {root}, which SQL may read: the snapshot holds"
                " every dataset's partition index; put it outside the storage root and allowed directories"
            )


def _tables(cur: duckdb.DuckDBPyConnection) -> list[str]:
    rows = cur.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? AND database_name = current_database()"
        " ORDER BY table_name",
        [WD],
    ).fetchall()
    return [r[0] for r in rows if r[0] not in LOCAL_TABLES]


def _columns(cur: duckdb.DuckDBPyConnection, table: str) -> list[list[str]]:
    return [[r[0], r[1]] for r in cur.execute(f"DESCRIBE {WD}.{table}").fetchall()]


def _write_object(objects: Path, reader: pa.RecordBatchReader) -> tuple[str, int, int]:
    """Stream ``reader`` into ``objects/<sha256>.parquet``; (sha256, rows, bytes)."""
    fd, tmp = tempfile.mkstemp(dir=objects, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as writer:
            for batch in reader:
                rows += batch.num_rows
                writer.write_batch(batch)
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        size = os.path.getsize(tmp)
        final = objects / f"{digest.hexdigest()}.parquet"
        if final.exists():
            os.unlink(tmp)
            os.utime(final)  # fresh again for the age rule of step 4
        else:
            os.replace(tmp, final)
        return digest.hexdigest(), rows, size
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _replace_file(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish(db: duckdb.DuckDBPyConnection, directory: Path, fit: Fit, keep: int = 3) -> Published:
    """Publish the context of ``db`` (an open instance) into ``directory``; see the module docstring's steps."""
    started = time.perf_counter()
    objects = directory / "objects"
    manifests = directory / "manifests"
    objects.mkdir(parents=True, exist_ok=True)
    manifests.mkdir(parents=True, exist_ok=True)
    cur = db.cursor()
    tables: dict[str, dict[str, Any]] = {}
    written = 0
    try:
        cur.execute("BEGIN TRANSACTION")  # step 1: one MVCC instant for every table
        for table in _tables(cur):
            reader = cur.sql(f"SELECT * FROM {WD}.{table}").to_arrow_reader(BATCH_ROWS)  # type: ignore[attr-defined]
            name, rows, size = _write_object(objects, reader)  # step 2
            written += size
            tables[table] = {"object": name, "rows": rows, "columns": _columns(cur, table)}
        progress = cur.execute(
            f"SELECT shard, deltas_offset, applied_lsn, bootstrapped FROM {WD}.shard_progress ORDER BY shard"
        ).fetchall()
    finally:
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
        cur.close()
    created = utcnow()
    doc = {
        "format": FORMAT,
        "created_at": iso(created),
        "fit": asdict(fit),
        "tables": tables,
        "shards": {
            str(s): {"deltas_offset": off, "applied_lsn": format_lsn(int(lsn)), "bootstrapped": bool(boot)}
            for s, off, lsn, boot in progress
        },
    }
    body = json.dumps(doc, indent=1, sort_keys=True).encode()
    name = f"{created.strftime('%Y%m%dT%H%M%S.%fZ')}-{hashlib.sha256(body).hexdigest()[:12]}.json"
    _replace_file(manifests / name, body)  # step 3
    _replace_file(directory / "LATEST", name.encode())
    collect_garbage(directory, keep)  # step 4
    elapsed = time.perf_counter() - started
    metrics.CONTEXT_SNAPSHOT_PUBLISHES.labels(result="ok").inc()
    metrics.CONTEXT_SNAPSHOT_PUBLISH_DURATION.observe(elapsed)
    metrics.CONTEXT_SNAPSHOT_PUBLISHED_AT.set(created.timestamp())
    return Published(name, manifests / name, {t: v["rows"] for t, v in tables.items()}, elapsed, written)


def collect_garbage(directory: Path, keep: int, min_age_s: float = GC_MIN_AGE_S) -> int:
    """Delete manifests beyond the ``keep`` newest and the objects none of those names (older than
    ``min_age_s``); the number of files deleted."""
    manifests = sorted((directory / "manifests").glob("*.json"))
    latest = _latest_name(directory)
    kept = manifests[-max(1, keep) :]
    deleted = 0
    for m in manifests[: -max(1, keep)]:
        if m.name != latest:
            with contextlib.suppress(FileNotFoundError):
                m.unlink()
                deleted += 1
    named: set[str] = set()
    for m in kept + ([directory / "manifests" / latest] if latest else []):
        with contextlib.suppress(FileNotFoundError, ValueError):
            named.update(t["object"] for t in json.loads(m.read_bytes())["tables"].values())
    now = time.time()
    for obj in (directory / "objects").glob("*.parquet"):
        with contextlib.suppress(FileNotFoundError):
            if obj.stem not in named and now - obj.stat().st_mtime >= min_age_s:
                obj.unlink()
                deleted += 1
    return deleted


def _latest_name(directory: Path) -> str | None:
    try:
        return (directory / "LATEST").read_text().strip() or None
    except FileNotFoundError:
        return None


def latest_manifest(directory: Path) -> dict[str, Any] | None:
    """The newest published manifest (None when nothing was published)."""
    name = _latest_name(directory)
    if name is None:
        return None
    try:
        doc = json.loads((directory / "manifests" / name).read_bytes())
    except (FileNotFoundError, ValueError) as exc:
        raise SnapshotUnusable("corrupt", f"manifest {name}: {exc}") from exc
    doc["name"] = name
    return doc


def _read_object(directory: Path, name: str) -> pa.Table:
    try:
        data = (directory / "objects" / f"{name}.parquet").read_bytes()
    except FileNotFoundError as exc:
        raise SnapshotUnusable("corrupt", f"object {name} is missing") from exc
    if hashlib.sha256(data).hexdigest() != name:
        raise SnapshotUnusable("corrupt", f"object {name}: its bytes do not hash to its name")
    return pq.read_table(pa.BufferReader(data))


def restore(cur: duckdb.DuckDBPyConnection, directory: Path, fit: Fit) -> dict[str, Any] | None:
    """Fill the (empty) context of writer cursor ``cur`` from the newest snapshot (module docstring's steps);
    the manifest used, or None when nothing was published. Raises :class:`SnapshotUnusable`."""
    doc = latest_manifest(directory)  # step 1
    if doc is None:
        return None
    if doc.get("format") != FORMAT:
        raise SnapshotUnusable("incompatible", f"format {doc.get('format')!r}, this version reads {FORMAT}")
    if doc.get("fit") != asdict(fit):
        raise SnapshotUnusable(
            "incompatible", f"published for {doc.get('fit')}, this replica is {asdict(fit)}"
        )
    local = set(_tables(cur))
    tables: dict[str, dict[str, Any]] = doc["tables"]
    if set(tables) != local:
        raise SnapshotUnusable("incompatible", f"tables {sorted(tables)}, this version has {sorted(local)}")
    for table, meta in tables.items():
        if meta["columns"] != _columns(cur, table):
            raise SnapshotUnusable("incompatible", f"{WD}.{table} columns differ from this version's")
    data = {table: _read_object(directory, meta["object"]) for table, meta in tables.items()}  # step 2
    cur.begin()  # step 3
    try:
        for table, rows in data.items():
            cur.execute(f"DELETE FROM {WD}.{table}")
            view = f"__wd_snapshot_{table}"
            cur.register(view, rows)
            try:
                names = ", ".join(f'"{c[0]}"' for c in tables[table]["columns"])
                cur.execute(f"INSERT INTO {WD}.{table} ({names}) SELECT {names} FROM {view}")
            finally:
                cur.unregister(view)
        cur.commit()
    except Exception:
        with contextlib.suppress(Exception):
            cur.rollback()
        raise
    return doc


def publish_due(
    *,
    published_before: bool,
    since_publish_s: float,
    interval_s: float,
    tail_changes: int,
    recent_changes: int,
    max_tail_changes: int,
) -> bool:
    """Whether a context that changed since its last publish is published now.

    * nothing published yet: at once (a new replica should not wait ``interval_s`` for a first snapshot);
    * ``interval_s`` since the last publish;
    * or the *tail* — index rows changed by deltas since the last publish, what a replica booting from it
      replays — reached ``max_tail_changes`` (0 = off) and the burst behind it settled (at most 1% of that
      changed in the last check, ``recent_changes``): after a backlog (a connector's initial snapshot, a bulk
      import) the snapshot covers it, without publishing over and over while it still flows.
    """
    if not published_before or since_publish_s >= interval_s:
        return True
    return 0 < max_tail_changes <= tail_changes and recent_changes <= max_tail_changes // 100


class Publisher:
    """Publishes the store's context when :func:`publish_due` says so, once every shard is bootstrapped and the
    context changed since the last publish; checks every ``check_s``; a thread of the query service (never the
    writer)."""

    def __init__(
        self,
        db: Callable[[], duckdb.DuckDBPyConnection],
        ready: Callable[[], object | None],
        directory: Path,
        fit: Fit,
        interval_s: float,
        keep: int,
        changes: Callable[[], int] = lambda: 0,
        max_tail_changes: int = 0,
        check_s: float = 1.0,
    ) -> None:
        self._db = db
        # what the context holds now (e.g. the shards' offsets and the store's version) once every shard is
        # bootstrapped, else None: a publish is due when it differs from the last published one
        self._ready = ready
        # index rows changed by deltas so far (a counter that only grows)
        self._changes = changes
        self.directory = directory
        self.fit = fit
        self.interval_s = interval_s
        self.keep = keep
        self.max_tail_changes = max_tail_changes
        self.check_s = check_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: Published | None = None
        self._published_state: object | None = None
        self._published_at = 0.0
        self._published_changes = 0
        self._seen_changes = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="context-snapshot", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def publish_if_due(self, now: float | None = None) -> Published | None:
        """Publish now when every shard is bootstrapped, the context changed and :func:`publish_due` agrees."""
        now = time.monotonic() if now is None else now
        changes = self._changes()
        recent, self._seen_changes = changes - self._seen_changes, changes
        state = self._ready()
        if state is None or state == self._published_state:
            return None
        if not publish_due(
            published_before=self.last is not None,
            since_publish_s=now - self._published_at,
            interval_s=self.interval_s,
            tail_changes=changes - self._published_changes,
            recent_changes=recent,
            max_tail_changes=self.max_tail_changes,
        ):
            return None
        try:
            published = publish(self._db(), self.directory, self.fit, self.keep)
        except Exception as exc:
            metrics.CONTEXT_SNAPSHOT_PUBLISHES.labels(result="error").inc()
            log.warning("context snapshot: publish into %s failed: %s", self.directory, exc)
            return None
        self._published_state = state
        self._published_at = now
        self._published_changes = changes
        self.last = published
        log.info(
            "context snapshot %s published in %.1f ms (%d bytes; %s)",
            published.manifest,
            published.seconds * 1000,
            published.bytes_written,
            ", ".join(f"{t} {n}" for t, n in published.tables.items()),
        )
        return published

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            self.publish_if_due()
