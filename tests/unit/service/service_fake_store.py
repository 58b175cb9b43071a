"""An in-memory stand-in for ``sinks.context.store.ContextStore`` (unit tests only).

Real DuckDB (in-memory) with the same sandbox settings, one Parquet file per dataset (written from the
``data.<view>`` tables at start) read the way the store reads them, and the ``timestore_runtime`` views
the planner filters; ``statement_tree``/``files_outside`` serve the execution guard as the store's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import duckdb

from walduck.config import ContextMode


@dataclass(slots=True)
class FakeProgress:
    shard: int
    applied_lsn: int = 0
    staleness_s: float | None = 0.5
    bootstrapped: bool = True
    deltas_offset: int = -1
    src_offset: int = -1
    newest_commit_ts: str | None = None
    last_apply_ms: float | None = None
    last_error: str | None = None
    applied_at: str | None = None


@dataclass(slots=True)
class FakeDataset:
    id: str
    slug: str
    view_name: str
    columns: list[tuple[str, str]]
    metadata: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    description: str | None = None
    status: str = "active"
    timestamp_column: str = "timestamp"
    partition_keys: list[str] = field(default_factory=list)
    partition_count: int = 1
    total_rows: int = 2
    total_bytes: int = 100
    updated_at: str | None = "2024-01-01T00:00:00Z"
    alias_warning: str | None = None
    collision: bool = False
    shard: int = 0
    write_format: str = "parquet"


class FakeStore:
    full_scan = False
    walduck = SimpleNamespace(context_mode=ContextMode.INCREMENTAL)
    opened_at = None

    def __init__(
        self, pool_size: int = 4, trace_files: bool = False, memory_limit: str | None = None
    ) -> None:
        self.db = duckdb.connect(":memory:", config={"memory_limit": memory_limit} if memory_limit else {})
        self.db.execute(
            """
            CREATE SCHEMA data; CREATE SCHEMA timestore_runtime;
            CREATE TABLE data.observatory (timestamp TIMESTAMP, site VARCHAR, value DOUBLE);
            INSERT INTO data.observatory VALUES ('2024-01-01 00:00:00', 'alpha', 42.5),
                                                ('2024-01-01 01:00:00', 'beta', 37.1);
            CREATE TABLE data.secret (timestamp TIMESTAMP, payload VARCHAR);
            INSERT INTO data.secret VALUES ('2024-01-01 00:00:00', 'classified');
            CREATE TABLE timestore_runtime.datasets (dataset_id VARCHAR, dataset_slug VARCHAR);
            INSERT INTO timestore_runtime.datasets VALUES ('ds-obs', 'observatory'), ('ds-sec', 'secret');
            CREATE TABLE timestore_runtime.partitions (dataset_slug VARCHAR, partition_id VARCHAR);
            INSERT INTO timestore_runtime.partitions VALUES ('observatory', 'part-1'), ('secret', 'part-2');
            CREATE TABLE timestore_runtime.columns (dataset_slug VARCHAR, column_name VARCHAR);
            """
        )
        self.dir = tempfile.mkdtemp(prefix="walduck-fake-store-")
        self.files = {"ds-obs": f"{self.dir}/observatory.parquet", "ds-sec": f"{self.dir}/secret.parquet"}
        self.db.execute(f"COPY data.observatory TO '{self.files['ds-obs']}' (FORMAT parquet)")
        self.db.execute(f"COPY data.secret TO '{self.files['ds-sec']}' (FORMAT parquet)")
        self.db.execute("SET allowed_directories = ?", [[self.dir + "/"]])
        self.db.execute("SET enable_external_access = false")
        if trace_files:  # DuckDB's own file-open log: the oracle of what a read really opened
            self.db.execute("CALL enable_logging('FileSystem')")
        self.db.execute("SET lock_configuration = true")
        self.pool: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        for _ in range(pool_size):
            self.pool.put(self.db.cursor())
        self.views = [
            FakeDataset(
                "ds-obs",
                "observatory",
                "observatory",
                [("timestamp", "TIMESTAMP"), ("site", "VARCHAR"), ("value", "DOUBLE")],
            ),
            FakeDataset(
                "ds-sec",
                "secret",
                "secret",
                [("timestamp", "TIMESTAMP"), ("payload", "VARCHAR")],
                metadata={"iam": {"readScopes": ["secret:read"]}},
            ),
        ]
        self.lsn = 0x16_B374D848
        self.rebuilds: list[tuple[str | None, str]] = []
        self.bootstrapped = True

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.pool.get(timeout=5)
        ok = False
        try:
            yield cur
            ok = True
        finally:
            if not ok:
                cur.close()
                cur = self.db.cursor()
            self.pool.put(cur)

    def progress(self) -> dict[int, FakeProgress]:
        return {0: FakeProgress(0, self.lsn, 0.5, self.bootstrapped)}

    def applied_lsn(self) -> int:
        return self.lsn

    async def wait_for_lsn(self, lsn: int, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.lsn < lsn:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def datasets(self) -> list[FakeDataset]:
        return list(self.views)

    def resolve_relation(self, name: str) -> list[FakeDataset]:
        return [v for v in self.views if v.slug == name] + [
            v for v in self.views if v.view_name == name and v.slug != name
        ]

    def relation_sql(
        self, dataset_id: str, start: Any = None, end: Any = None, *, bind: Any = None, **_: Any
    ) -> tuple[str, list[str]]:
        files = [self.files[dataset_id]]
        listed = bind(files) if bind is not None else "[" + ", ".join(f"'{f}'" for f in files) + "]"
        return f"SELECT * FROM read_parquet({listed}, hive_partitioning = false)", []

    def opened_files(self) -> set[str]:
        """Paths DuckDB opened since the last call (needs ``trace_files``), from its FileSystem log."""
        cur = self.db.cursor()
        try:
            rows = cur.execute("SELECT message FROM duckdb_logs WHERE type = 'FileSystem'").fetchall()
            cur.execute("CALL truncate_duckdb_logs()")
        finally:
            cur.close()
        events = (json.loads(r[0]) for r in rows)
        return {e["path"] for e in events if e.get("op") == "OPEN"}

    def statement_tree(self, sql: str) -> dict[str, Any]:
        cur = self.db.cursor()
        try:
            return json.loads(cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
        finally:
            cur.close()

    def pinned_snapshot(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def files_outside(self, dataset_id: str, locations: list[str]) -> list[str]:
        listed = self.files.get(dataset_id)
        return [loc for loc in dict.fromkeys(locations) if loc != listed]

    def rebuild(self, dataset_id: str | None = None, reason: str = "manual") -> None:
        self.rebuilds.append((dataset_id, reason))

    def request_rebuild(self, dataset_id: str | None = None, reason: str = "manual") -> None:
        self.rebuilds.append((dataset_id, reason))

    def rebuilding(self) -> bool:
        return False

    # what the admin snapshot reads (sinks/service/admin_snapshot.py)
    def version(self) -> int:
        return 0

    def is_open(self) -> bool:
        return True

    def partition_index(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        return []

    def collision_warnings(self, views: list[Any] | None = None) -> list[str]:
        return []

    def rebuild_history(self) -> dict[str, dict[str, Any]]:
        return {}

    def pending_rebuilds(self) -> list[dict[str, Any]]:
        return []

    def running_rebuilds(self) -> list[dict[str, Any]]:
        return []
