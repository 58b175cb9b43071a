"""Relation binding of a read query: what every table reference of the parsed tree means.

One function, :func:`bind_relations`, shared by the /sql/read policy (which refuses what does not bind)
and the planner (which rewrites what does). Each ``exp.Table`` of the tree binds to exactly one of:

============  =================================================================================
kind          meaning
============  =================================================================================
``cte``       an unqualified name defined by a ``WITH`` in scope (``Binding.cte`` is that CTE)
``dataset``   ``timestore.<view>``: a dataset relation (IAM and pruning are the planner's)
``runtime``   ``timestore_runtime.<table>``: a runtime table (filtered for the principal)
``function``  an allowed value-generating table function (``range``, ``generate_series``, ``unnest``)
``refused``   anything else; ``Binding.problem`` says why (the caller answers 400)
============  =================================================================================

CTE scope follows DuckDB's binder (checked against DuckDB 2.0): the innermost ``WITH`` that defines the
name wins (shadowing); inside the body of a CTE at position *i* of its ``WITH``, the CTEs at positions
< *i* are visible, position *i* itself only under ``RECURSIVE``, later positions never; the query the
``WITH`` belongs to sees all of them; names are case-insensitive, quoted or not. Two CTEs of one ``WITH``
with the same name are refused (DuckDB refuses them too).

This module does **not** decide IAM and does not have to match DuckDB's binder exactly to be safe: the
planner renames every CTE to a name of its own making (``__wd_<nonce>_c<n>``) and every reference
bound here to that name, so a reference DuckDB would have bound elsewhere (a file path, a catalog
object — the ``WITH RECURSIVE "<file>" AS (SELECT * FROM "<file>")`` bypass) can only bind to the CTE
this module chose or fail to bind (HTTP 400). A reference this module cannot bind is refused before
DuckDB sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sqlglot import exp

from sinks.context.naming import RUNTIME_SCHEMA, VIEW_SCHEMA

# value-generating table functions a read may call (they read nothing)
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
RUNTIME_TABLES = frozenset({"datasets", "partitions", "columns"})

# functions that reach outside the context's dataset relations, refused wherever they appear: by the
# /sql/read policy on sqlglot's parse, and by the execution guard (guard.py) on DuckDB's own parse
DENIED_FUNCTION = re.compile(
    r"^(read_\w*|\w+_scan|\w+_query|\w+_attach|parquet_\w*|iceberg_\w*|delta_\w*|duckdb_\w*|pragma_\w*"
    r"|ducklake_\w*|sqlite_\w*|postgres_\w*|mysql_\w*|http_\w*|pg_get_\w*|\w*substrait\w*"
    r"|sniff_csv|glob|query|query_table|query_table_as|getenv|current_setting|getvariable|which_secret"
    r"|sql_auto_complete|checkpoint|force_checkpoint|load_extension|install_extension"
    r"|json_execute_serialized_sql|json_serialize_sql|json_deserialize_sql|json_serialize_plan"
    r"|dbgen|dsdgen|tpch\w*|tpcds\w*|summary|enable_\w*|disable_\w*|set_\w*|import_\w*|export_\w*)$"
)


Kind = Literal["cte", "dataset", "runtime", "function", "refused"]


@dataclass(slots=True)
class Binding:
    table: exp.Table
    kind: Kind
    name: str  # lower-cased relation, view, table-function or CTE name
    cte: exp.CTE | None = None
    problem: str | None = None


def table_function_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return type(node).__name__.lower()


def _with_of(node: exp.Expression) -> exp.With | None:
    with_ = node.args.get("with_") or node.args.get("with")
    return with_ if isinstance(with_, exp.With) else None


def _visible_cte(table: exp.Table, name: str) -> tuple[exp.CTE | None, str | None]:
    """The CTE ``name`` refers to from ``table`` (innermost visible definition), or why it is refused."""
    path: list[exp.Expression] = []  # table's ancestors, innermost first
    node = table.parent
    while node is not None:
        path.append(node)
        node = node.parent
    on_path = {id(n) for n in path}
    for holder in path:
        with_ = _with_of(holder)
        if with_ is None:
            continue
        ctes = list(with_.expressions)
        same = [i for i, cte in enumerate(ctes) if str(cte.alias_or_name).lower() == name]
        if len(same) > 1:
            return None, f"CTE name {name} is defined twice in one WITH"
        if not same:
            continue
        position = same[0]
        own = next((i for i, cte in enumerate(ctes) if id(cte) in on_path), None)
        if own is None or position < own or (position == own and with_.args.get("recursive")):
            return ctes[position], None
        # defined here but not visible from this CTE's body: DuckDB looks further out
    return None, None


def _bind(table: exp.Table) -> Binding:
    source = table.this
    if isinstance(source, exp.Func):
        name = table_function_name(source)
        if name in ALLOWED_TABLE_FUNCTIONS:
            return Binding(table, "function", name)
        return Binding(table, "refused", name, problem=f"Table function {name} is not permitted on /sql/read")
    if not isinstance(source, exp.Identifier):
        text = table.sql(dialect="duckdb")
        return Binding(table, "refused", text, problem=f"Relation {text} is not permitted on /sql/read")
    name = str(source.this).lower()
    schema = str(table.db).lower()
    only = f"only {VIEW_SCHEMA}.* and {RUNTIME_SCHEMA}.* relations"
    if table.catalog:
        text = table.sql(dialect="duckdb")
        return Binding(
            table, "refused", name, problem=f"Relation {text} is not permitted on /sql/read ({only})"
        )
    if not schema:
        cte, problem = _visible_cte(table, name)
        if cte is not None:
            return Binding(table, "cte", name, cte=cte)
        return Binding(
            table,
            "refused",
            name,
            problem=problem or f"Relation {source.this} is not permitted on /sql/read ({only} and CTE names)",
        )
    if schema == VIEW_SCHEMA:
        return Binding(table, "dataset", name)
    if schema == RUNTIME_SCHEMA and name in RUNTIME_TABLES:
        return Binding(table, "runtime", name)
    return Binding(
        table,
        "refused",
        name,
        problem=f"Relation {table.db}.{source.this} is not permitted on /sql/read ({only})",
    )


def bind_relations(tree: exp.Expression) -> list[Binding]:
    """Every table reference of ``tree`` with what it binds to, in tree order."""
    return [_bind(table) for table in tree.find_all(exp.Table)]
