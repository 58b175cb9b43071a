"""The DuckDB instance of a context: opened with its limits and sandbox, checkpointed when idle."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import duckdb

from sinks.context import ddl
from sinks.settings import SinkSettings
from walduck import metrics

log = logging.getLogger(__name__)


def connect(path: Path, settings: SinkSettings, storage_root: str) -> duckdb.DuckDBPyConnection:
    """The context file opened, its tables and runtime views created, sandboxed (:func:`sandbox`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(storage_root).mkdir(parents=True, exist_ok=True)
    config = {
        "threads": settings.duckdb_threads,
        "memory_limit": settings.duckdb_memory_limit,
        "checkpoint_threshold": settings.duckdb_checkpoint_threshold,  # (see checkpoint())
        "max_temp_directory_size": settings.duckdb_max_temp_directory_size,  # bounded spill
    }
    if settings.duckdb_temp_directory:
        config["temp_directory"] = settings.duckdb_temp_directory
    db = duckdb.connect(str(path), config=config)
    db.execute(ddl.TABLES)
    db.execute(ddl.RUNTIME_VIEWS)
    if settings.duckdb_parquet_metadata_cache:
        # GLOBAL: the setting is per connection by default, and the readers are other connections (cursors)
        # of this instance; a plain SET here never reached them. Parsed footers are kept in DuckDB's object
        # cache (counted in memory_limit, evicted under pressure) and re-validated against the file on every
        # open, so a rewritten file is re-read. Without it every scan reads and parses every file's footer
        # again: ~20–30% of the CPU of a scan of many small partition files (docs/performance.md, "query").
        db.execute("SET GLOBAL parquet_metadata_cache = true")
    sandbox(db, [storage_root, *settings.allowed_directories])
    return db


def sandbox(db: duckdb.DuckDBPyConnection, directories: list[str]) -> None:
    """Nothing outside ``directories`` opens, no extension installs or loads, and no SQL can undo it."""
    dirs = [d.rstrip("/") + "/" for d in directories]
    db.execute("SET allowed_directories = ?", [dirs])
    db.execute("SET enable_external_access = false")
    db.execute("SET autoload_known_extensions = false")
    db.execute("SET autoinstall_known_extensions = false")
    db.execute("SET allow_community_extensions = false")
    db.execute("SET lock_configuration = true")


def wal_bytes(path: Path) -> int:
    """Size of DuckDB's write-ahead log: committed changes not yet folded into the database file."""
    try:
        return os.stat(f"{path}.wal").st_size
    except FileNotFoundError:
        return 0


def checkpoint(
    path: Path, writer: duckdb.DuckDBPyConnection, lock: threading.RLock, min_wal_bytes: int = 0
) -> bool | None:
    """Fold the WAL into the database file now, holding the writer (called when no delta is waiting, so
    no apply pays for it). ``None``: the WAL is below ``min_wal_bytes``; ``False``: DuckDB refused (older
    versions do while any transaction is open; 2.0 checkpoints beside readers) and the next idle moment
    tries again; ``True``: done."""
    wal = wal_bytes(path)
    metrics.CONTEXT_WAL_BYTES.set(wal)
    if wal < max(1, min_wal_bytes):
        return None
    with lock:
        started = time.perf_counter()
        try:
            writer.execute("CHECKPOINT")
        except duckdb.Error as exc:
            metrics.CONTEXT_CHECKPOINTS.labels(result="busy").inc()
            log.debug("idle checkpoint refused: %s", exc)
            return False
        metrics.CONTEXT_CHECKPOINT_DURATION.observe(time.perf_counter() - started)
    metrics.CONTEXT_CHECKPOINTS.labels(result="done").inc()
    metrics.CONTEXT_WAL_BYTES.set(wal_bytes(path))
    return True
