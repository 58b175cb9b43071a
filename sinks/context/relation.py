"""SQL text of one dataset's relation: explicit file lists grouped by the columns the files hold, null-filled.

Reference §2.8: Timestore projected the newest schema's columns from every file without
``union_by_name``, so an additive schema change broke the whole view. Here files are grouped by the
columns they really hold (their footers, ``sinks/context/file_columns.py``; issue 20: the schema version
the catalog attributes a file to is not evidence of its columns, lifecycle jobs copy old files into newer
manifests); each group is one ``read_parquet([...])`` whose select list names the newest schema's columns,
with ``NULL::T AS col`` for columns the files lack, a cast where a file's type converts safely, and
``NULL::T`` plus a per-partition warning where it does not (:func:`read_as`). A file whose footer cannot
be read (remote) is grouped by its catalog schema version as before (:func:`group_files`).

Scans with a known select list pass ``hive_partitioning = false``: Timestore writes partition keys as
``<key>=<value>`` path segments, and DuckDB's hive auto-detection would otherwise parse every path at bind
time and, for a schema column named like a key (``window``, ``dataset``), return the path's value instead
of the file's, and only when every file of the scan has the same keys. The select list never asks for a
path-only column, so the scan reads the files' own values and skips the per-file path parsing.

:class:`RelationReader` builds one dataset's relation from the partition index: the partitions overlapping a
time range, files that are missing (skipped, warned) or outside the storage root (skipped, warned), and the
directory listings forgotten when DuckDB reports a missing file (``forget_missing_files``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb

from sinks.context.datasets import DatasetCache
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.file_columns import FileColumns
from sinks.context.file_presence import FilePresence, FileState
from sinks.context.naming import quote_ident, quote_literal
from sinks.context.values import FAR_FUTURE, FAR_PAST, naive_utc
from walduck import metrics
from walduck.timeutil import iso

log = logging.getLogger(__name__)
# DuckDB's messages for a file it cannot open (a partition file deleted before its catalog row)
MISSING_FILE_MARKERS = ("no files found", "cannot open file", "no such file", "could not open file")
_QUOTED_PATH = re.compile(r'"([^"]+)"')


@dataclass(slots=True)
class FileGroup:
    """Files with one set of columns; ``columns`` None = unknown (read as the newest schema).

    ``physical``: ``columns`` are the files' own (footer) types, compared with :func:`read_as`; otherwise
    the declared types of a schema version (cast where they differ from the newest schema).
    ``quoted``: ``locations`` are already SQL string literals (the store caches them per file).
    """

    columns: dict[str, str] | None
    locations: list[str]
    quoted: bool = False
    physical: bool = False


_BIGINT_SAFE = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"})
_DOUBLE_SAFE = _BIGINT_SAFE | {"UBIGINT", "HUGEINT", "UHUGEINT", "FLOAT", "DOUBLE"}
_TIMESTAMP_SAFE = frozenset({"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "DATE"})
_SAME = {"TIMESTAMP": frozenset({"TIMESTAMP", "TIMESTAMP WITH TIME ZONE"})}
"""File types read as they are for a schema type: Timestore writes ``timestamp`` columns UTC-adjusted, and
they have always come out as DuckDB's ``TIMESTAMP WITH TIME ZONE``."""


def read_as(file_type: str, schema_type: str) -> str | None:
    """How a file's column of ``file_type`` provides a schema column of ``schema_type``: ``"same"`` (as it
    is), ``"cast"`` (a cast that cannot fail on any value) or ``None`` (incompatible: read as NULL, warned).

    The schema's types are the Timestore mapping (``naming.duckdb_type``): VARCHAR, DOUBLE, BIGINT, BOOLEAN,
    TIMESTAMP. A lossy or value-dependent cast (VARCHAR -> DOUBLE, DOUBLE -> BIGINT, UBIGINT -> BIGINT) is
    incompatible: it would fail the whole query on one value instead of one partition's column.
    """
    f, t = file_type.upper(), schema_type.upper()
    if f == t or f in _SAME.get(t, ()):
        return "same"
    if t == "VARCHAR":
        return "cast"
    if t == "BIGINT" and f in _BIGINT_SAFE:
        return "cast"
    if t == "DOUBLE" and (f in _DOUBLE_SAFE or f.startswith("DECIMAL")):
        return "cast"
    if t == "TIMESTAMP" and f in _TIMESTAMP_SAFE:
        return "cast"
    return None


def _lookup(group_columns: dict[str, str]) -> dict[str, str]:
    """Column names are case-insensitive in DuckDB: a file's ``Site`` provides the schema's ``site``."""
    out: dict[str, str] = {}
    for name, typ in group_columns.items():
        out.setdefault(name.lower(), typ)
    return out


def incompatible_columns(
    columns: Sequence[tuple[str, str]], file_columns: dict[str, str]
) -> list[tuple[str, str, str]]:
    """(column, file type, schema type) of the schema columns a file holds with an incompatible type."""
    have = _lookup(file_columns)
    out: list[tuple[str, str, str]] = []
    for name, typ in columns:
        ftype = have.get(name.lower())
        if ftype is not None and read_as(ftype, typ) is None:
            out.append((name, ftype, typ))
    return out


def incompatible_warning(slug: str, partition_id: str, location: str, bad: list[tuple[str, str, str]]) -> str:
    what = ", ".join(f"{name} is {ftype} in the file, {typ} in the schema" for name, ftype, typ in bad)
    return (
        f"Partition {partition_id} of dataset {slug}: incompatible column type(s) in {location} ({what});"
        " read as NULL for this partition."
    )


def group_files(
    files: Sequence[tuple[str, str, str | None]],
    columns: Sequence[tuple[str, str]],
    versions: dict[str, dict[str, str]],
    footers: dict[str, dict[str, str] | None],
    slug: str,
) -> tuple[list[FileGroup], list[str]]:
    """Readable files ``(partition id, location, schema version id)`` into groups, and the per-partition
    warnings of incompatible column types. A file's footer decides its columns; without one (remote,
    unreadable) the schema version the catalog names does, and an unknown version reads as the newest."""
    groups: dict[tuple[object, ...], FileGroup] = {}
    warnings: list[str] = []
    for pid, loc, svid in files:
        cols = footers.get(loc)
        if cols is not None:
            key: tuple[object, ...] = ("file", tuple(cols.items()))
            bad = incompatible_columns(columns, cols) if columns else []
            if bad:
                warnings.append(incompatible_warning(slug, pid, loc, bad))
            group = groups.get(key)
            if group is None:
                group = groups[key] = FileGroup(cols, [], physical=True)
        else:
            known = svid if svid in versions else None
            key = ("version", known)
            group = groups.get(key)
            if group is None:
                group = groups[key] = FileGroup(versions.get(known) if known else None, [])
        group.locations.append(loc)
    return list(groups.values()), warnings


def empty_relation_sql(columns: Sequence[tuple[str, str]]) -> str:
    if not columns:
        return "SELECT 1 AS __empty WHERE false"
    select = ", ".join(f"CAST(NULL AS {typ}) AS {quote_ident(name)}" for name, typ in columns)
    return f"SELECT {select} WHERE false"


def file_list_sql(locations: Sequence[str], quoted: bool = False) -> str:
    return "[" + ", ".join(locations if quoted else (quote_literal(loc) for loc in locations)) + "]"


def select_list_sql(
    columns: Sequence[tuple[str, str]], group_columns: dict[str, str] | None, physical: bool = False
) -> str:
    """The newest schema's columns as a file group holding ``group_columns`` provides them (``physical``:
    the files' own types, see :class:`FileGroup`)."""
    if group_columns is None:
        return ", ".join(quote_ident(name) for name, _ in columns)
    have = _lookup(group_columns) if physical else group_columns
    items: list[str] = []
    for name, typ in columns:
        q = quote_ident(name)
        ftype = have.get(name.lower() if physical else name)
        if ftype is None:
            items.append(f"CAST(NULL AS {typ}) AS {q}")
        elif physical:
            how = read_as(ftype, typ)
            if how == "same":
                items.append(q)
            elif how == "cast":
                items.append(f"CAST({q} AS {typ}) AS {q}")
            else:
                items.append(f"CAST(NULL AS {typ}) AS {q}")
        elif ftype != typ:
            items.append(f"CAST({q} AS {typ}) AS {q}")
        else:
            items.append(q)
    return ", ".join(items)


# registers a file list as a statement parameter and returns its placeholder (``$7``)
FileBinder = Callable[[list[str]], str]


def group_select_sql(
    columns: Sequence[tuple[str, str]], group: FileGroup, bind: FileBinder | None = None
) -> str:
    if bind is not None and group.quoted:
        raise ValueError("quoted locations cannot be bound as a parameter")
    files = bind(list(group.locations)) if bind is not None else file_list_sql(group.locations, group.quoted)
    if not columns:
        return f"SELECT * FROM read_parquet({files}, union_by_name = true)"
    select = select_list_sql(columns, group.columns, group.physical)
    return f"SELECT {select} FROM read_parquet({files}, hive_partitioning = false)"


def merge_groups(columns: Sequence[tuple[str, str]], groups: Sequence[FileGroup]) -> list[FileGroup]:
    """Groups whose files need the same select list become one ``read_parquet`` (one scan, no UNION)."""
    if not columns:
        return [g for g in groups if g.locations]
    merged: dict[tuple[str, bool, tuple[str | None, ...]], FileGroup] = {}
    for g in groups:
        if not g.locations:
            continue
        # files of one scan must also agree on the types of the columns read: without union_by_name DuckDB
        # reads every file as the first one's types (a BIGINT file after an INTEGER one would be narrowed)
        types = (
            tuple(_lookup(g.columns).get(n.lower()) for n, _ in columns) if g.physical and g.columns else ()
        )
        key = (select_list_sql(columns, g.columns, g.physical), g.quoted, types)
        into = merged.get(key)
        if into is None:
            merged[key] = FileGroup(g.columns, list(g.locations), g.quoted, g.physical)
        else:
            into.locations.extend(g.locations)
    return list(merged.values())


def relation_sql(
    columns: Sequence[tuple[str, str]], groups: Sequence[FileGroup], bind: FileBinder | None = None
) -> str:
    """One SELECT per distinct select list joined by UNION ALL; an empty typed relation when none is left.

    ``bind``: file lists become statement parameters (the planner's path: no path is ever SQL text, and
    the execution guard sees exactly which files each scan may open); without it, string literals (the
    plain views).

    When every file's schema version matches the newest schema this is a single
    ``SELECT <columns> FROM read_parquet([...], hive_partitioning = false)`` without casts.
    """
    parts = [group_select_sql(columns, g, bind) for g in merge_groups(columns, groups)]
    if not parts:
        return empty_relation_sql(columns)
    if not columns and len(parts) > 1:
        return " UNION ALL BY NAME ".join(parts)
    return " UNION ALL ".join(parts)


class RelationReader:
    """One dataset's relation SQL from the partition index (see the module docstring)."""

    def __init__(
        self, cursor: Callable[[], duckdb.DuckDBPyConnection], datasets: DatasetCache, roots: list[str]
    ) -> None:
        self._cursor = cursor
        self._datasets = datasets
        # local file existence from directory listings cached per directory mtime (no stat per file per
        # query); a directory's listing is dropped when DuckDB reports a missing file in it (reader())
        self._presence = FilePresence(roots=roots)
        self._file_columns = FileColumns()
        self._outside_logged: set[str] = set()  # partition ids already logged as outside the root

    def relation_sql(
        self,
        dataset_id: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        count_skips: bool = True,
        bind: FileBinder | None = None,
    ) -> tuple[str, list[str]]:
        """SQL of a subquery over the dataset's visible partitions overlapping [start, end], and warnings.

        ``bind``: file lists become statement parameters (:func:`relation_sql`).

        Per call: one indexed DuckDB query for the overlapping partitions (MVCC-consistent, so an apply
        never has to patch a Python copy of the index); the dataset's columns and schema versions come
        from caches re-read only when an apply marks the dataset dirty; files already seen to exist are
        not stat'ed one by one (``file_presence``: directory listings cached per directory mtime).
        """
        lo = naive_utc(start) or FAR_PAST
        hi = naive_utc(end) or FAR_FUTURE
        view = self._datasets.get(dataset_id)
        versions = self._datasets.schema_versions(dataset_id)
        cur = self._cursor()
        try:
            parts = cur.execute(
                f"""SELECT id, location, schema_version_id FROM {WD}.partitions
                    WHERE dataset_id = ? AND end_time >= ? AND start_time <= ?
                      AND coalesce(file_format, 'parquet') = 'parquet'
                    ORDER BY start_time, id""",
                [dataset_id, lo, hi],
            ).fetchall()
        finally:
            cur.close()
        probe = self._presence.probe()
        missing: list[str] = []
        outside: list[tuple[str, str]] = []
        present: list[tuple[str, str, str | None]] = []
        for pid, loc, svid in parts:
            state = probe.state(loc)
            if state is FileState.PRESENT:
                present.append((pid, loc, svid))
            elif state is FileState.MISSING:
                missing.append(pid)
            else:
                outside.append((pid, loc))
        warnings = self._skip_warnings(view.slug, missing, count_skips) if missing else []
        if outside:
            warnings.extend(self._outside_warnings(view.slug, outside, count_skips))
        # a file's columns are what its footer says, whatever version the catalog attributes it to (issue 20)
        cur = self._cursor()
        try:
            footers = self._file_columns.columns(cur, [loc for _, loc, _ in present])
        finally:
            cur.close()
        groups, type_warnings = group_files(present, view.columns, versions, footers, view.slug)
        if type_warnings:
            warnings.extend(type_warnings)
            if count_skips:
                metrics.INCOMPATIBLE_PARTITION_COLUMNS.inc(len(type_warnings))
        if not groups:
            if parts:
                warnings.append(
                    f"No readable partitions found for dataset {view.slug}; returning empty view."
                )
            return empty_relation_sql(view.columns), warnings
        return relation_sql(view.columns, groups, bind), warnings

    def _outside_warnings(self, slug: str, outside: list[tuple[str, str]], count_skips: bool) -> list[str]:
        """Partitions whose file lies outside the storage root: skipped (DuckDB would refuse the whole read)."""
        if count_skips:
            metrics.PARTITIONS_OUTSIDE_ROOT.inc(len(outside))
            new = [(pid, loc) for pid, loc in outside if pid not in self._outside_logged]
            if new:
                if len(self._outside_logged) > 10_000:
                    self._outside_logged.clear()
                self._outside_logged.update(pid for pid, _ in new)
                log.warning(
                    "dataset %s: %d partition file(s) outside the storage root skipped, e.g. %s at %s",
                    slug,
                    len(new),
                    new[0][0],
                    new[0][1],
                )
        return [
            f"Ignored partition {pid} from dataset {slug}: its file {loc} lies outside the storage root."
            for pid, loc in outside
        ]

    def _skip_warnings(self, slug: str, missing: list[str], count_skips: bool) -> list[str]:
        """Timestore's "Skipped partition …" text per missing file (built only when a file is missing)."""
        if count_skips:
            metrics.SKIPPED_PARTITIONS.inc(len(missing))
        cur = self._cursor()
        try:
            rows = cur.execute(
                f"""SELECT id, start_time, end_time, storage_target_id, location FROM {WD}.partitions
                    WHERE list_contains(?, id) ORDER BY start_time, id""",
                [missing],
            ).fetchall()
        finally:
            cur.close()
        return [
            f"Skipped partition {pid} from dataset {slug}; storage target {target}; "
            f"window {iso(st)} – {iso(et)}; object not found at {loc}."
            for pid, st, et, target, loc in rows
        ]

    def files_outside(self, dataset_id: str, locations: list[str]) -> list[str]:
        """Those of ``locations`` the partition index does not list for ``dataset_id`` now."""
        cur = self._cursor()
        try:
            rows = cur.execute(
                f"""SELECT f.loc FROM (SELECT DISTINCT unnest(?::VARCHAR[]) AS loc) f
                    WHERE NOT EXISTS (SELECT 1 FROM {WD}.partitions p
                                      WHERE p.dataset_id = ? AND p.location = f.loc)""",
                [locations, dataset_id],
            ).fetchall()
        finally:
            cur.close()
        return [r[0] for r in rows]

    def forget_missing_files(self, error: str) -> None:
        """DuckDB could not open a file: drop the cached listing of its directory, so the next plan re-reads
        it (and skips the file with a warning).

        Called by the reader pool for every failed read; only "file not found" errors matter. The paths are
        taken from the message; when none can be named, every cached listing is dropped.
        """
        lowered = error.lower()
        if not any(marker in lowered for marker in MISSING_FILE_MARKERS):
            return
        paths = _QUOTED_PATH.findall(error)
        if not paths:
            self._presence.forget_all()
        for path in paths:
            self._presence.forget(path)
