"""The columns each Parquet file really holds, read from its footer once and cached (issue 20).

A dataset relation projects the dataset's newest schema from every file. Which of those columns a file has is
a property of the file, not of the schema version the catalog attributes it to: lifecycle jobs copy old
files into manifests of newer versions, and a manifest's version can be changed after its files were
written. So the relation asks the files: one ``parquet_schema([...])`` over the files not seen yet (through
the store's sandboxed DuckDB instance, which keeps parsed footers in its object cache), and the top-level
column names and DuckDB types are kept per location.

An entry holds while the file's ``(mtime_ns, size, inode)`` is unchanged: one ``stat`` per file per relation
(DuckDB's own footer cache validates the same way, on open), so a file replaced under its name is read
again. Remote locations (``s3://`` …) and files whose footer cannot be read get ``None``: the caller falls
back to the schema version the catalog names (``docs/contexts.md``, "Schema evolution").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import duckdb

Columns = dict[str, str]
"""Top-level column name -> DuckDB type, in file order."""

_Signature = tuple[int, int, int]


def top_level_columns(rows: Sequence[tuple[str, int | None, str | None]]) -> Columns:
    """``parquet_schema`` rows of ONE file (name, num_children, duckdb_type), in ``column_id`` order, root
    first: the root's direct children (nested columns' own children are skipped)."""
    out: Columns = {}
    if not rows:
        return out

    def skip(i: int) -> int:
        children = rows[i][1] or 0
        i += 1
        for _ in range(children):
            i = skip(i)
        return i

    i = 1
    for _ in range(rows[0][1] or 0):
        if i >= len(rows):
            break
        name, _children, typ = rows[i]
        out.setdefault(name, typ or "VARCHAR")
        i = skip(i)
    return out


class FileColumns:
    """Location -> the file's top-level columns, cached per file signature. Thread-safe."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._cache: dict[str, tuple[_Signature, Columns]] = {}
        self._lock = threading.Lock()
        self.footers_read = 0  # files whose footer was read (tests and benches look at it)

    def columns(self, cur: duckdb.DuckDBPyConnection, locations: Sequence[str]) -> dict[str, Columns | None]:
        """The columns of each of ``locations`` (``None``: unknown, see the module doc)."""
        out: dict[str, Columns | None] = {}
        misses: dict[str, _Signature] = {}
        cache = self._cache
        for loc in locations:
            if "://" in loc:
                out[loc] = None
                continue
            try:
                st = os.stat(loc)
            except OSError:
                out[loc] = None
                continue
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            hit = cache.get(loc)
            if hit is not None and hit[0] == sig:
                out[loc] = hit[1]
            else:
                misses[loc] = sig
        if misses:
            read = self._read(cur, list(misses))
            with self._lock:
                if len(cache) + len(read) > self.max_entries:
                    cache.clear()
                for loc, cols in read.items():
                    if cols is not None:
                        cache[loc] = (misses[loc], cols)
            for loc in misses:
                out[loc] = read.get(loc)
        return out

    def _read(self, cur: duckdb.DuckDBPyConnection, locations: list[str]) -> dict[str, Columns | None]:
        try:
            return self._read_many(cur, locations)
        except duckdb.Error:
            if len(locations) == 1:
                return {locations[0]: None}
        # one unreadable file fails the whole call: read one by one, the unreadable ones stay unknown
        out: dict[str, Columns | None] = {}
        for loc in locations:
            try:
                out.update(self._read_many(cur, [loc]))
            except duckdb.Error:
                out[loc] = None
        return out

    def _read_many(self, cur: duckdb.DuckDBPyConnection, locations: list[str]) -> dict[str, Columns | None]:
        rows = cur.execute(
            "SELECT file_name, name, num_children, duckdb_type FROM parquet_schema(?::VARCHAR[])"
            " ORDER BY file_name, column_id",
            [locations],
        ).fetchall()
        per_file: dict[str, list[tuple[str, int | None, str | None]]] = {}
        for file_name, name, children, typ in rows:
            per_file.setdefault(file_name, []).append((name, children, typ))
        self.footers_read += len(locations)
        return {loc: top_level_columns(per_file[loc]) if loc in per_file else None for loc in locations}
