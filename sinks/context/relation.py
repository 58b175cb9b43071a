"""SQL text of one dataset's relation: explicit file lists grouped by schema version, null-filled.

Reference §2.8: Timestore projected the newest schema's columns from every file without
``union_by_name``, so an additive schema change broke the whole view. Here files are grouped by the
schema version they were written with; each group is one ``read_parquet([...])`` whose select list
names the newest schema's columns, with ``NULL::T AS col`` for columns that version lacks and a cast
where a column's type changed. No footer is opened to find this out (``union_by_name`` opens every
footer at bind time, reference facts §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sinks.context.naming import quote_ident, quote_literal


@dataclass(slots=True)
class FileGroup:
    """Files written with one schema version; ``columns`` None = the version is unknown (read as newest)."""

    columns: dict[str, str] | None
    locations: list[str]


def empty_relation_sql(columns: Sequence[tuple[str, str]]) -> str:
    if not columns:
        return "SELECT 1 AS __empty WHERE false"
    select = ", ".join(f"CAST(NULL AS {typ}) AS {quote_ident(name)}" for name, typ in columns)
    return f"SELECT {select} WHERE false"


def file_list_sql(locations: Sequence[str]) -> str:
    return "[" + ", ".join(quote_literal(loc) for loc in locations) + "]"


def group_select_sql(columns: Sequence[tuple[str, str]], group: FileGroup) -> str:
    files = file_list_sql(group.locations)
    if not columns:
        return f"SELECT * FROM read_parquet({files}, union_by_name = true)"
    items: list[str] = []
    for name, typ in columns:
        q = quote_ident(name)
        if group.columns is None:
            items.append(q)
        elif name not in group.columns:
            items.append(f"CAST(NULL AS {typ}) AS {q}")
        elif group.columns[name] != typ:
            items.append(f"CAST({q} AS {typ}) AS {q}")
        else:
            items.append(q)
    return f"SELECT {', '.join(items)} FROM read_parquet({files})"


def relation_sql(columns: Sequence[tuple[str, str]], groups: Sequence[FileGroup]) -> str:
    """One SELECT per non-empty group joined by UNION ALL; an empty typed relation when none is left."""
    parts = [group_select_sql(columns, g) for g in groups if g.locations]
    if not parts:
        return empty_relation_sql(columns)
    if not columns and len(parts) > 1:
        return " UNION ALL BY NAME ".join(parts)
    return " UNION ALL ".join(parts)
