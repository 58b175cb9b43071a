"""The dataset cache: every dataset the context holds as a :class:`DatasetView`, re-read only when dirty.

An apply or build marks the datasets it touched (:meth:`DatasetCache.mark`); the next read re-reads only
those, in ONE query (dataset rows, partition aggregates, columns). Schema versions per dataset are cached
the same way (the relation SQL's file grouping reads them on every plan).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb

from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.exceptions import UnknownDataset
from sinks.context.naming import alias_warning, sanitize_view_name, schema_columns, timestamp_column
from sinks.context.pgsource import as_json_text
from sinks.context.values import as_dict, naive_utc
from walduck.timeutil import iso

Cursor = Callable[[], duckdb.DuckDBPyConnection]
Snapshot = tuple[tuple["DatasetView", ...], dict[str, "DatasetView"]]


@dataclass(slots=True)
class DatasetView:
    id: str
    slug: str
    name: str
    description: str | None
    status: str
    metadata: dict[str, Any]
    view_name: str
    columns: list[tuple[str, str]]
    timestamp_column: str
    partition_keys: list[str]
    partition_count: int
    total_rows: int
    total_bytes: int
    updated_at: str | None
    alias_warning: str | None
    collision: bool = False
    shard: int = 0
    write_format: str = "parquet"
    created_at: str | None = None
    column_details: list[tuple[str, str, bool, str | None]] = field(default_factory=list)


def dataset_row(ds: dict[str, Any], shard: int) -> list[Any]:
    """A catalog ``datasets`` row as the context's ``wd.datasets`` row (apply and rebuild write the same)."""
    did = str(ds["id"])
    return [
        did,
        shard,
        ds.get("slug") or did,
        ds.get("name") or ds.get("slug") or did,
        ds.get("description"),
        ds.get("status") or "active",
        ds.get("write_format") or "parquet",
        ds.get("default_storage_target_id"),
        as_json_text(as_dict(ds.get("metadata"))),
        naive_utc(ds.get("created_at")),
        naive_utc(ds.get("updated_at")),
    ]


def copy_view(v: DatasetView) -> DatasetView:
    return dataclasses.replace(v, columns=list(v.columns), partition_keys=list(v.partition_keys))


def collision_warnings(views: list[DatasetView]) -> list[str]:
    by_name: dict[str, list[str]] = {}
    for v in views:
        by_name.setdefault(v.view_name, []).append(v.slug)
    return [
        f"Datasets {', '.join(sorted(slugs))} all sanitise to view timestore.{name}; "
        "the relation is ambiguous (reference it with the exact slug)."
        for name, slugs in sorted(by_name.items())
        if len(slugs) > 1
    ]


def partition_index(cursor: Cursor, dataset_id: str | None = None) -> list[dict[str, Any]]:
    """Visible partitions held (for verify and ``?detail=partitions``)."""
    cur = cursor()
    try:
        where = " WHERE dataset_id = ?" if dataset_id else ""
        rows = cur.execute(
            f"""SELECT dataset_id, manifest_shard, id, file_path, row_count, shard FROM {WD}.partitions{where}
                ORDER BY dataset_id, manifest_shard, id""",
            [dataset_id] if dataset_id else [],
        ).fetchall()
    finally:
        cur.close()
    return [
        {
            "datasetId": d,
            "manifestShard": m,
            "partitionId": p,
            "filePath": f,
            "rowCount": r,
            "contextShard": s,
        }
        for d, m, p, f, r, s in rows
    ]


class DatasetCache:
    def __init__(self, cursor: Cursor) -> None:
        self._cursor = cursor
        self._cache: dict[str, DatasetView] = {}
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._lock = threading.Lock()
        # read-path caches (rebuilt from _cache when a dataset is marked dirty; see sync)
        self._snapshot: Snapshot | None = None
        self._sv_cache: dict[str, dict[str, dict[str, str]]] = {}

    def mark(self, touched: set[str]) -> None:
        """These datasets changed: re-read them at the next read."""
        with self._lock:
            self._dirty |= touched

    # ------------------------------------------------------------------ reads
    def datasets(self) -> list[DatasetView]:
        """Every dataset the context holds (copies: callers may change them), newest update first."""
        views, _ = self.sync()
        return [copy_view(v) for v in views]

    def get(self, dataset_id: str) -> DatasetView:
        """The cached view itself (read-only for callers); :class:`UnknownDataset` if not held."""
        view = self.sync()[1].get(dataset_id)
        if view is None:
            raise UnknownDataset(dataset_id)
        return view

    def dataset(self, dataset_id: str) -> DatasetView:
        return copy_view(self.get(dataset_id))

    def resolve(self, name: str) -> list[DatasetView]:
        """Datasets a ``timestore.<name>`` reference may mean: exact slug matches first, then view-name matches."""
        views, _ = self.sync()
        exact = [v for v in views if v.slug == name]
        if exact:
            found = exact + [v for v in views if v.view_name == name and v.slug != name]
        else:
            # DuckDB identifiers are case-insensitive: `timestore.OBSERVATORY` reaches view `observatory`
            folded = name.lower()
            found = [v for v in views if v.slug.lower() == folded or v.view_name.lower() == folded]
        return [copy_view(v) for v in found]

    def sync(self) -> Snapshot:
        """The dataset cache, brought up to date: (views sorted newest first, by id). Read-only for callers.

        Only datasets marked dirty since the last call are re-read. One loader at a time, holding the
        lock: a concurrent caller must not read the cache between another caller taking the dirty set and
        storing what it loaded (it would miss those datasets).
        """
        with self._lock:
            if self._all_dirty:
                self._cache.clear()
                self._sv_cache.clear()
                dirty: set[str] | None = None
            else:
                dirty = set(self._dirty)
            self._dirty.clear()
            self._all_dirty = False
            if dirty is None or dirty:
                fresh = self._load(dirty)
                for did in dirty or set():
                    self._cache.pop(did, None)
                    self._sv_cache.pop(did, None)
                self._cache.update(fresh)
                self._snapshot = None
            if self._snapshot is None:
                self._snapshot = self._build_snapshot(self._cache.values())
            return self._snapshot

    def schema_versions(self, dataset_id: str) -> dict[str, dict[str, str]]:
        """Column name -> type per schema version id of the dataset (cached until the dataset changes)."""
        cached = self._sv_cache.get(dataset_id)
        if cached is not None:
            return cached
        with self._lock:  # loaded and stored under the lock that invalidates it (sync)
            if dataset_id in self._dirty or self._all_dirty:
                return self._read_schema_versions(dataset_id)  # stale in a moment: do not cache
            cached = self._sv_cache.get(dataset_id)
            if cached is None:
                cached = self._sv_cache[dataset_id] = self._read_schema_versions(dataset_id)
            return cached

    # ------------------------------------------------------------------ loading
    def _read_schema_versions(self, dataset_id: str) -> dict[str, dict[str, str]]:
        cur = self._cursor()
        try:
            rows = cur.execute(
                f"SELECT id, schema FROM {WD}.schema_versions WHERE dataset_id = ?", [dataset_id]
            ).fetchall()
        finally:
            cur.close()
        return {svid: {n: t for n, t, _, _ in schema_columns(as_dict(schema))} for svid, schema in rows}

    @staticmethod
    def _build_snapshot(cached: Iterable[DatasetView]) -> Snapshot:
        views = [copy_view(v) for v in cached]
        by_name: dict[str, list[DatasetView]] = {}
        for v in views:
            by_name.setdefault(v.view_name, []).append(v)
        for group in by_name.values():
            if len(group) > 1:
                for v in group:
                    v.collision = True
        views.sort(key=lambda v: (v.updated_at or "", v.id), reverse=True)
        return tuple(views), {v.id: v for v in views}

    def _load(self, only: set[str] | None) -> dict[str, DatasetView]:
        # ONE query (dataset rows, partition aggregates, columns): it runs after every apply that touched a
        # dataset, on the request path; the filters sit inside the aggregates so re-reading one dataset
        # never scans the other datasets' partitions
        # `col IN (?, …)`, not list_contains(): DuckDB pushes an IN list into the scan (2× faster here)
        if only is not None and not only:
            return {}
        ids = sorted(only) if only is not None else []
        flt = f"WHERE {{col}} IN ({', '.join('?' * len(ids))})" if only is not None else ""
        params = ids * 3
        cur = self._cursor()
        try:
            rows = cur.execute(
                f"""WITH p AS (SELECT dataset_id, count(*) AS n, sum(row_count) AS r, sum(file_size_bytes) AS b,
                                      list(DISTINCT partition_key) AS keys
                               FROM {WD}.partitions {flt.format(col="dataset_id")} GROUP BY dataset_id),
                         c AS (SELECT dataset_id,
                                      list([column_name, data_type, nullable::VARCHAR, description]
                                           ORDER BY ordinal) AS cols
                               FROM {WD}.columns {flt.format(col="dataset_id")} GROUP BY dataset_id)
                    SELECT d.id, d.slug, d.name, d.description, d.status, d.metadata, d.updated_at, d.shard,
                           d.write_format, d.created_at,
                           coalesce(p.n, 0), coalesce(p.r, 0), coalesce(p.b, 0), p.keys, c.cols
                    FROM {WD}.datasets d
                    LEFT JOIN p ON p.dataset_id = d.id
                    LEFT JOIN c ON c.dataset_id = d.id
                    {flt.format(col="d.id")}""",
                params,
            ).fetchall()
        finally:
            cur.close()
        out: dict[str, DatasetView] = {}
        for did, slug, name, desc, status, meta, updated, shard, wf, created, n, r, b, keys, cols in rows:
            metadata = as_dict(meta)
            details = [(c[0], c[1], c[2] == "true", c[3]) for c in cols or []]
            columns = [(c[0], c[1]) for c in details]
            key_names: set[str] = set()
            for k in keys or []:
                key_names |= set(as_dict(k))
            view = sanitize_view_name(slug)
            out[did] = DatasetView(
                id=did,
                slug=slug,
                name=name,
                description=desc,
                status=status,
                metadata=metadata,
                view_name=view,
                columns=columns,
                timestamp_column=timestamp_column(metadata, columns),
                partition_keys=sorted(key_names),
                partition_count=int(n),
                total_rows=int(r),
                total_bytes=int(b),
                updated_at=iso(updated) if updated else None,
                alias_warning=alias_warning(slug, view),
                shard=int(shard),
                write_format=wf,
                created_at=iso(created) if created else None,
                column_details=details,
            )
        return out
