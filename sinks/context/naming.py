"""Timestore-compatible names and types (Timestore's loadSqlContext: type mapping, timestamp column, view names)."""

from __future__ import annotations

import re
from typing import Any

VIEW_SCHEMA = "timestore"
RUNTIME_SCHEMA = "timestore_runtime"

_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")
_UNDERSCORES = re.compile(r"_+")


def sanitize_view_name(slug: str) -> str:
    """Timestore's ``createViewName`` sanitising (case preserved)."""
    name = _NOT_IDENT.sub("_", slug.strip())
    name = _UNDERSCORES.sub("_", name).strip("_")
    if not name:
        name = "dataset"
    if name[0].isdigit():
        name = f"d_{name}"
    return name


def alias_warning(slug: str, view_name: str) -> str | None:
    if view_name == slug:
        return None
    return f"Dataset {slug} exposed as view {view_name} to comply with identifier rules."


def duckdb_type(field_type: str | None) -> str:
    """Schema field type -> DuckDB type (Timestore's schema-to-DuckDB type mapping)."""
    t = field_type.strip().lower() if isinstance(field_type, str) else ""
    if t == "timestamp":
        return "TIMESTAMP"
    if t in ("double", "float", "real"):
        return "DOUBLE"
    if t in ("integer", "int", "bigint"):
        return "BIGINT"
    if t in ("boolean", "bool"):
        return "BOOLEAN"
    return "VARCHAR"


def schema_columns(schema: dict[str, Any] | None) -> list[tuple[str, str, bool, str | None]]:
    """``{fields:[{name,type,nullable?,description?}]}`` -> [(name, duckdb_type, nullable, description)]."""
    out: list[tuple[str, str, bool, str | None]] = []
    seen: set[str] = set()
    fields = schema.get("fields") if isinstance(schema, dict) else None
    for f in fields if isinstance(fields, list) else []:  # jsonb: any shape may arrive
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or f["name"] in seen:
            continue
        seen.add(f["name"])
        description = f.get("description")
        out.append(
            (
                f["name"],
                duckdb_type(f.get("type")),
                bool(f.get("nullable", True)),
                description if isinstance(description, str) else None,
            )
        )
    return out


def timestamp_column(metadata: dict[str, Any] | None, columns: list[tuple[str, str]]) -> str:
    """Reference §2.1.5: defaultTimestampColumn if a column, else first TIMESTAMP, else `timestamp`, else first."""
    names = [c[0] for c in columns]
    default = (metadata or {}).get("defaultTimestampColumn")
    if isinstance(default, str) and default in names:
        return default
    for name, typ in columns:
        if typ == "TIMESTAMP":
            return name
    if "timestamp" in names:
        return "timestamp"
    return names[0] if names else "timestamp"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
