"""Helpers shared by the context benchmarks: a store over a bulk-loaded catalog and synthetic deltas."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.store import ContextStore
from sinks.settings import SinkSettings
from stack.bench.env import ScenarioEnv
from walduck.deltas import PARTITION_FIELDS, Delta, DeltaKind, ShardChange
from walduck.records import partition_of
from walduck.timeutil import iso


def open_store(env: ScenarioEnv, name: str = "context", **overrides: Any) -> ContextStore:
    """A ContextStore with the query service's default knobs (overrides on top), in its own file."""
    sink = SinkSettings(context_path=env.work_dir / name / "context.duckdb", **overrides)
    store = ContextStore(sink, env.settings)
    store.open()
    return store


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - started, out


@dataclass
class DeltaMaker:
    """Deltas against what a store holds: ``changes`` partition changes to one dataset per delta.

    Half of the changes (rounded up) add new partitions (copies of an existing row with a fresh id and
    path), the rest delete partitions this maker added earlier (or existing ones), so the context keeps
    its size. Source offsets and LSNs increase per shard, as the compactor's would.
    """

    store: ContextStore
    partitions: int
    offsets: dict[int, int] = field(default_factory=dict)
    lsn: itertools.count = field(default_factory=lambda: itertools.count(1 << 40, 16))  # type: ignore[type-arg]
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    pool: dict[str, list[str]] = field(default_factory=dict)

    def template(self, dataset_id: str) -> dict[str, Any]:
        if dataset_id not in self.templates:
            with self.store.reader() as cur:
                cols = ", ".join(f for f in PARTITION_FIELDS)
                row = cur.execute(
                    f"SELECT {cols} FROM {WD}.partitions WHERE dataset_id = ? LIMIT 1", [dataset_id]
                ).fetchone()
                existing = cur.execute(
                    f"SELECT id FROM {WD}.partitions WHERE dataset_id = ? LIMIT 5000", [dataset_id]
                ).fetchall()
            if row is None:
                raise LookupError(f"dataset {dataset_id} has no partitions")
            doc = dict(zip(PARTITION_FIELDS, row, strict=True))
            for key in ("start_time", "end_time"):
                if isinstance(doc[key], datetime):
                    doc[key] = iso(doc[key].replace(tzinfo=UTC))
            self.templates[dataset_id] = doc
            self.pool[dataset_id] = [r[0] for r in existing]
        return self.templates[dataset_id]

    def make(self, dataset_id: str, changes: int) -> tuple[Delta, int]:
        """(delta, the deltas-topic partition it belongs to)."""
        base = self.template(dataset_id)
        adds = (changes + 1) // 2
        pool = self.pool[dataset_id]
        deletes = [pool.pop(0) for _ in range(min(changes - adds, len(pool)))]
        adds = changes - len(deletes)
        upserts = []
        for _ in range(adds):
            pid = f"bench-{uuid.uuid4().hex}"
            upserts.append({**base, "id": pid, "file_path": f"{base['file_path']}.{pid}"})
            pool.append(pid)
        shard = partition_of(dataset_id, self.partitions)
        frm = self.offsets.get(shard, -1) + 1
        self.offsets[shard] = frm
        lsn = next(self.lsn)
        delta = Delta(
            kind=DeltaKind.DELTA,
            src_partition=shard,
            src_offset_from=frm,
            src_offset_to=frm,
            lsn_from=lsn,
            lsn_to=lsn + 8,
            commit_ts_max=iso(datetime.now(UTC)),
            raw_changes=changes,
            dataset_id=dataset_id,
            shards={
                str(base["manifest_shard"]): ShardChange(
                    upserts=upserts, deletes=deletes, published_manifest_id=base["manifest_id"]
                )
            },
        )
        return delta, shard

    def apply(self, delta: Delta, shard: int) -> float:
        """Apply through ContextStore.apply (the consumer's call); seconds taken."""
        started = time.perf_counter()
        self.store.apply(delta, shard, delta.src_offset_to)
        return time.perf_counter() - started


def hour_range(day_start: datetime, hour: int) -> tuple[datetime, datetime]:
    lo = day_start + timedelta(hours=hour)
    return lo, lo + timedelta(minutes=59, seconds=59)
