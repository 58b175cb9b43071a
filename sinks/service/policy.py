"""The /sql/read sandbox: exactly one read-only SELECT over the context's own relations.

Two checks, in this order (they mirror Timestore's error ordering, reference §3):

1. :func:`is_select_only` — Timestore's textual test (leading comments stripped; must start with
   ``select``, or ``with`` and contain ``select``; no second statement after a ``;``). A failure is the
   exact Timestore 400 ``Only single SELECT statements are permitted on /sql/read``.
2. :func:`check_read_sql` — a real parse with sqlglot (DuckDB dialect). Allowed: one statement whose
   root is a SELECT, a set operation or a parenthesised query, containing no DML/DDL/command node.
   Relations are ALLOW-listed: ``timestore.<view>``, ``timestore_runtime.<table>``, names of CTEs in
   scope, ``range``/``generate_series``/``unnest`` and inline ``VALUES``. Functions that reach outside
   the context (``read_*``, ``*_scan``, ``glob``, ``query``, ``getenv``, ``current_setting``,
   ``duckdb_*`` …) are rejected wherever they appear.

What runs is always the statement **re-rendered from the checked tree** (by the planner), never the
client's text, so comment or quoting tricks that parse differently in DuckDB cannot smuggle anything
past the check. DuckDB's own guards (``enable_external_access=false``, ``allowed_directories``,
``lock_configuration``) are configured by the context store as a second, independent layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

NOT_SINGLE_SELECT = "Only single SELECT statements are permitted on /sql/read"
VIEW_SCHEMA = "timestore"
RUNTIME_SCHEMA = "timestore_runtime"
ALLOWED_SCHEMAS = frozenset({VIEW_SCHEMA, RUNTIME_SCHEMA})
# table functions that only generate values
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

_DENIED_FUNCTION = re.compile(
    r"^(read_\w*|\w+_scan|\w+_query|\w+_attach|parquet_\w*|iceberg_\w*|delta_\w*|duckdb_\w*|pragma_\w*"
    r"|ducklake_\w*|sqlite_\w*|postgres_\w*|mysql_\w*|http_\w*|pg_get_\w*|\w*substrait\w*"
    r"|sniff_csv|glob|query|query_table|query_table_as|getenv|current_setting|getvariable|which_secret"
    r"|sql_auto_complete|checkpoint|force_checkpoint|load_extension|install_extension"
    r"|json_execute_serialized_sql|json_serialize_sql|json_deserialize_sql|json_serialize_plan"
    r"|dbgen|dsdgen|tpch\w*|tpcds\w*|summary|enable_\w*|disable_\w*|set_\w*|import_\w*|export_\w*)$"
)

_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = tuple(
    cls
    for cls in (
        getattr(exp, name, None)
        for name in (
            "Insert",
            "Update",
            "Delete",
            "Merge",
            "Create",
            "Drop",
            "Alter",
            "Command",
            "Set",
            "Pragma",
            "Copy",
            "Attach",
            "Detach",
            "Use",
            "Install",
            "Describe",
            "Summarize",
            "Into",
            "Transaction",
            "Commit",
            "Rollback",
            "LoadData",
            "Export",
        )
    )
    if isinstance(cls, type)
)
_QUERY_ROOTS: tuple[type[exp.Expression], ...] = (exp.Select, exp.SetOperation, exp.Subquery)


class PolicyViolation(Exception):
    """The statement is not allowed on /sql/read (400). ``message`` is what the client sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class CheckedQuery:
    expression: exp.Expression
    # lower-cased view names referenced as timestore.<view>
    views: set[str] = field(default_factory=set)
    runtime_tables: set[str] = field(default_factory=set)


# --- 1. Timestore's textual check --------------------------------------------------------------


def _strip_leading_comments(sql: str) -> str:
    i = 0
    while i < len(sql):
        if sql.startswith("--", i):
            nl = sql.find("\n", i + 2)
            if nl == -1:
                return ""
            i = nl + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end == -1:
                return ""
            i = end + 2
        elif sql[i].isspace():
            i += 1
        else:
            break
    return sql[i:]


def _has_additional_statements(sql: str) -> bool:
    in_single = in_double = in_line = in_block = False
    i = 0
    while i < len(sql):
        ch, nxt = sql[i], sql[i + 1 : i + 2]
        if in_line:
            in_line = ch != "\n"
        elif in_block:
            if ch == "*" and nxt == "/":
                in_block = False
                i += 1
        elif not in_single and not in_double and ch == "-" and nxt == "-":
            in_line = True
            i += 1
        elif not in_single and not in_double and ch == "/" and nxt == "*":
            in_block = True
            i += 1
        elif not in_double and ch == "'":
            if in_single and nxt == "'":
                i += 1
            else:
                in_single = not in_single
        elif not in_single and ch == '"':
            if in_double and nxt == '"':
                i += 1
            else:
                in_double = not in_double
        elif not in_single and not in_double and ch == ";":
            return bool(sql[i + 1 :].strip())
        i += 1
    return False


def is_select_only(sql: str) -> bool:
    trimmed = sql.strip()
    if not trimmed or _has_additional_statements(trimmed):
        return False
    body = _strip_leading_comments(trimmed).strip()
    if re.match(r"^select\b", body, re.IGNORECASE):
        return True
    if re.match(r"^with\b", body, re.IGNORECASE):
        return re.search(r"\bselect\b", body, re.IGNORECASE) is not None
    return False


# --- 2. the parse-tree sandbox -----------------------------------------------------------------


def function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _cte_in_scope(table: exp.Table, name: str) -> bool:
    """Is ``name`` a CTE visible from ``table``? (a CTE sees earlier siblings; itself only if RECURSIVE)."""
    ancestors: list[exp.Expression] = []
    node = table.parent
    while node is not None:
        ancestors.append(node)
        node = node.parent
    ancestor_ids = {id(a) for a in ancestors}
    for holder in ancestors:
        with_ = holder.args.get("with_") or holder.args.get("with")
        if not isinstance(with_, exp.With):
            continue
        ctes = list(with_.expressions)
        own = next((i for i, cte in enumerate(ctes) if id(cte) in ancestor_ids), None)
        for position, cte in enumerate(ctes):
            if str(cte.alias_or_name).lower() != name:
                continue
            if own is None or position < own or (position == own and with_.args.get("recursive")):
                return True
    return False


def _check_table(table: exp.Table, checked: CheckedQuery) -> None:
    source = table.this
    if isinstance(source, exp.Func):
        name = function_name(source)
        if name not in ALLOWED_TABLE_FUNCTIONS:
            raise PolicyViolation(f"Table function {name} is not permitted on /sql/read")
        return
    if not isinstance(source, exp.Identifier):
        raise PolicyViolation(f"Relation {table.sql(dialect='duckdb')} is not permitted on /sql/read")
    name = str(source.this).lower()
    schema = str(table.db).lower()
    if table.catalog:
        raise PolicyViolation(
            f"Relation {table.sql(dialect='duckdb')} is not permitted on /sql/read "
            f"(only {VIEW_SCHEMA}.* and {RUNTIME_SCHEMA}.* relations)"
        )
    if not schema:
        if _cte_in_scope(table, name):
            return
        raise PolicyViolation(
            f"Relation {source.this} is not permitted on /sql/read "
            f"(only {VIEW_SCHEMA}.* and {RUNTIME_SCHEMA}.* relations and CTE names)"
        )
    if schema not in ALLOWED_SCHEMAS:
        raise PolicyViolation(
            f"Relation {table.db}.{source.this} is not permitted on /sql/read "
            f"(only {VIEW_SCHEMA}.* and {RUNTIME_SCHEMA}.* relations)"
        )
    (checked.views if schema == VIEW_SCHEMA else checked.runtime_tables).add(name)


def check_read_sql(sql: str) -> CheckedQuery:
    """Parse and check one /sql/read statement; raises :class:`PolicyViolation`."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise PolicyViolation(f"{NOT_SINGLE_SELECT} (could not parse: {first})") from exc
    except RecursionError as exc:
        raise PolicyViolation(f"{NOT_SINGLE_SELECT} (statement nested too deeply)") from exc
    if len(statements) != 1:
        raise PolicyViolation(NOT_SINGLE_SELECT)
    root = statements[0]
    if not isinstance(root, _QUERY_ROOTS):
        raise PolicyViolation(NOT_SINGLE_SELECT)
    checked = CheckedQuery(expression=root)
    for node in root.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise PolicyViolation(f"{NOT_SINGLE_SELECT} ({node.key.upper()} is not allowed)")
        if isinstance(node, exp.Select) and node.args.get("into") is not None:
            raise PolicyViolation(f"{NOT_SINGLE_SELECT} (SELECT … INTO is not allowed)")
        if isinstance(node, exp.Table):
            _check_table(node, checked)
        elif isinstance(node, exp.Lateral):
            inner = node.this
            if isinstance(inner, exp.Func) and function_name(inner) not in ALLOWED_TABLE_FUNCTIONS:
                raise PolicyViolation(f"Table function {function_name(inner)} is not permitted on /sql/read")
        elif isinstance(node, exp.Func):
            name = function_name(node)
            if _DENIED_FUNCTION.match(name):
                raise PolicyViolation(f"Function {name} is not permitted on /sql/read")
    return checked
