"""The admin snapshot: the JSON ``GET /admin/sql/runtime-cache`` answers (Timestore's runtime-cache shape),
built from a context store's datasets, shard progress and rebuild history."""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from sinks.context import staleness
from walduck.lsn import format_lsn
from walduck.timeutil import iso

_REBUILD_FIELDS = ("scope", "reason", "result", "error", "at", "durationMs", "lsn", "replayedDeltas")


class SnapshotSource(Protocol):
    """The part of ``sinks.context.store.ContextStore`` the snapshot reads."""

    full_scan: bool
    walduck: Any

    def datasets(self) -> list[Any]: ...
    def progress(self) -> dict[int, Any]: ...
    def applied_lsn(self) -> int: ...
    def version(self) -> int: ...
    def is_open(self) -> bool: ...
    @property
    def opened_at(self) -> Any: ...
    def partition_index(self, dataset_id: str | None = None) -> list[dict[str, Any]]: ...
    def collision_warnings(self, views: list[Any] | None = None) -> list[str]: ...
    def rebuild_history(self) -> dict[str, dict[str, Any]]: ...
    def pending_rebuilds(self) -> list[dict[str, Any]]: ...
    def running_rebuilds(self) -> list[dict[str, Any]]: ...


def admin_snapshot(store: SnapshotSource, detail_partitions: bool = False) -> dict[str, Any]:
    """The snapshot; ``detail_partitions``: every dataset also lists its visible partitions."""
    views = store.datasets()
    prog = store.progress()
    history = store.rebuild_history()
    context_staleness = staleness.overall(p.staleness_s for p in prog.values())
    signature = hashlib.sha1(
        "|".join(f"{v.id}:{v.partition_count}:{v.total_rows}:{v.updated_at}" for v in views).encode()
    ).hexdigest()
    parts_by_ds: dict[str, list[dict[str, Any]]] = {}
    if detail_partitions:
        for row in store.partition_index():
            parts_by_ds.setdefault(row["datasetId"], []).append(row)
    datasets = []
    every = history.get("*", {})
    slugs = {v.id: v.slug for v in views}
    for v in views:
        info = history.get(v.id, {})
        if every and (every.get("at") or "") > (info.get("at") or ""):
            info = every  # a full rebuild newer than the dataset's own (its failure names no dataset)
        shard = prog.get(v.shard)
        entry: dict[str, Any] = {
            "datasetId": v.id,
            "datasetSlug": v.slug,
            "status": v.status,
            "updatedAt": v.updated_at,
            "included": v.write_format == "parquet",
            "signature": hashlib.sha1(f"{v.id}:{v.partition_count}:{v.total_rows}".encode()).hexdigest(),
            "lastRefreshedAt": info.get("at") or (shard.applied_at if shard else None),
            "lastBuildDurationMs": info.get("durationMs"),
            "lastError": (shard.last_error if shard else None) or info.get("error"),
            "manifestVersion": None,
            "manifestUpdatedAt": v.updated_at,
            "partitionCount": v.partition_count,
            "totalRows": v.total_rows,
            "totalBytes": v.total_bytes,
            "refreshReason": info.get("reason") or "delta",
            "viewName": v.view_name,
            "contextShard": v.shard,
            "collision": v.collision,
            "lastRebuild": {k: info.get(k) for k in _REBUILD_FIELDS} if info else None,
        }
        if detail_partitions:
            entry["partitions"] = parts_by_ds.get(v.id, [])
        datasets.append(entry)
    opened_at = store.opened_at
    return {
        "incrementalEnabled": not store.full_scan,
        "contextMode": store.walduck.context_mode.value,
        "ttlMs": None,
        "cachePresent": store.is_open(),
        "cacheMode": "full" if store.full_scan else "incremental",
        "version": store.version(),
        "signature": signature,
        "builtAt": iso(opened_at) if opened_at else None,
        "expiresAt": None,
        "stalenessSeconds": context_staleness,
        "datasetCount": len(views),
        "appliedLsn": format_lsn(store.applied_lsn()),
        "datasets": datasets,
        "pendingInvalidations": [
            {**job, "datasetSlug": slugs.get(job["datasetId"])} for job in store.pending_rebuilds()
        ],
        "runningRebuilds": store.running_rebuilds(),
        "lastFullRebuild": every or None,
        "shards": [
            {
                "shard": p.shard,
                "appliedLsn": format_lsn(p.applied_lsn),
                "deltasOffset": p.deltas_offset,
                "srcOffset": p.src_offset,
                "newestCommitTs": p.newest_commit_ts,
                "stalenessSeconds": p.staleness_s,
                "lastApplyMs": p.last_apply_ms,
                "lastError": p.last_error,
                "bootstrapped": p.bootstrapped,
            }
            for p in prog.values()
        ],
        "warnings": [w for v in views if (w := v.alias_warning)] + store.collision_warnings(views),
    }
