"""SQL text of one dataset's relation: explicit file lists grouped by schema version, null-filled.

Reference §2.8: Timestore projected the newest schema's columns from every file without
``union_by_name``, so an additive schema change broke the whole view. Here files are grouped by the
schema version they were written with; each group is one ``read_parquet([...])`` whose select list
names the newest schema's columns, with ``NULL::T AS col`` for columns that version lacks and a cast
where a column's type changed. No footer is opened to find this out (``union_by_name`` opens every
footer at bind time, DuckDB's documented read_parquet behaviour).

Scans with a known select list pass ``hive_partitioning = false``: Timestore writes partition keys as
``<key>=<value>`` path segments, and DuckDB's hive auto-detection would otherwise parse every path at bind
time and, for a schema column named like a key (``window``, ``dataset``), return the path's value instead
of the file's, and only when every file of the scan has the same keys. The select list never asks for a
path-only column, so the scan reads the files' own values and skips the per-file path parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sinks.context.naming import quote_ident, quote_literal


@dataclass(slots=True)
class FileGroup:
    """Files written with one schema version; ``columns`` None = the version is unknown (read as newest).

    ``quoted``: ``locations`` are already SQL string literals (the store caches them per file).
    """

    columns: dict[str, str] | None
    locations: list[str]
    quoted: bool = False


def empty_relation_sql(columns: Sequence[tuple[str, str]]) -> str:
    if not columns:
        return "SELECT 1 AS __empty WHERE false"
    select = ", ".join(f"CAST(NULL AS {typ}) AS {quote_ident(name)}" for name, typ in columns)
    return f"SELECT {select} WHERE false"


def file_list_sql(locations: Sequence[str], quoted: bool = False) -> str:
    return "[" + ", ".join(locations if quoted else (quote_literal(loc) for loc in locations)) + "]"


def select_list_sql(columns: Sequence[tuple[str, str]], group_columns: dict[str, str] | None) -> str:
    """The newest schema's columns as a file group written with ``group_columns`` provides them."""
    if group_columns is None:
        return ", ".join(quote_ident(name) for name, _ in columns)
    items: list[str] = []
    for name, typ in columns:
        q = quote_ident(name)
        if name not in group_columns:
            items.append(f"CAST(NULL AS {typ}) AS {q}")
        elif group_columns[name] != typ:
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
    return f"SELECT {select_list_sql(columns, group.columns)} FROM read_parquet({files}, hive_partitioning = false)"


def merge_groups(columns: Sequence[tuple[str, str]], groups: Sequence[FileGroup]) -> list[FileGroup]:
    """Groups whose files need the same select list become one ``read_parquet`` (one scan, no UNION)."""
    if not columns:
        return [g for g in groups if g.locations]
    merged: dict[tuple[str, bool], FileGroup] = {}
    for g in groups:
        if not g.locations:
            continue
        key = (select_list_sql(columns, g.columns), g.quoted)
        into = merged.get(key)
        if into is None:
            merged[key] = FileGroup(g.columns, list(g.locations), g.quoted)
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
