"""Execution guard: the second, independent check between the planner and DuckDB.

The policy and the planner decide what a read may touch from sqlglot's parse of the client's text. The
guard re-checks the **exact statement DuckDB will run**, parsed by DuckDB itself (``json_serialize_sql``),
against the partition index, so that a bug in the policy, the scope rules or the planner alone cannot
leak a file or a catalog object. It holds, or the read is refused before execution:

1. Every table reference is one of: a CTE whose name the planner made (``<nonce prefix>c<n>``) and the
   statement defines; ``timestore_runtime.<table>`` as the ``FROM`` of a ``SELECT`` whose whole ``WHERE``
   is ``list_contains($n::VARCHAR[], <key>)`` with parameter *n* listing only the caller's datasets; a
   subquery, join, pivot, ``VALUES`` or empty ``FROM``; or a table function of :data:`TABLE_FUNCTIONS`.
   Anything else (a name DuckDB would bind to a file, a view, ``duckdb_*``/``pg_*``/``sqlite_master``, a
   ``SHOW``/``DESCRIBE`` reference) is refused.
2. ``read_parquet`` takes its files only as a planner parameter, and every file of that list is listed
   by the partition index for a dataset the caller may read (``ContextStore.files_outside``), in the same
   index snapshot the plan was made from (:func:`plan_verified`); otherwise :class:`FilesNotListed`.
3. No function of the denied list (``scope.DENIED_FUNCTION``: file readers, settings, ``getenv`` …) and no
   schema-qualified function appears anywhere; planner parameters appear only where the planner put them.
4. The parse contains only node kinds this module knows; an unknown one is refused (fail closed).

What it does not do: decide IAM (it is given the caller's readable dataset ids) or prune. It costs one
``json_serialize_sql`` of a statement without file paths (they are parameters) and one indexed lookup
per scanned dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sinks.context.exceptions import FilesNotListed, GuardViolation
from sinks.context.naming import RUNTIME_SCHEMA
from sinks.context.planner import RUNTIME_TABLES, PlannedQuery
from sinks.context.scope import ALLOWED_TABLE_FUNCTIONS, DENIED_FUNCTION

TABLE_FUNCTIONS = ALLOWED_TABLE_FUNCTIONS | {"read_parquet"}
READ_PARQUET_OPTIONS = frozenset({"hive_partitioning", "union_by_name"})
# query nodes, table references and modifiers DuckDB 2.0 serializes for the statements /sql/read allows
KNOWN_NODE_TYPES = frozenset(
    {
        "SELECT_NODE",
        "SET_OPERATION_NODE",
        "RECURSIVE_CTE_NODE",
        "CTE_NODE",
        "BASE_TABLE",
        "JOIN",
        "SUBQUERY",
        "TABLE_FUNCTION",
        "EMPTY",
        "EXPRESSION_LIST",
        "PIVOT",
        "ORDER_MODIFIER",
        "LIMIT_MODIFIER",
        "LIMIT_PERCENT_MODIFIER",
        "DISTINCT_MODIFIER",
        "ORDER_DEFAULT",
        "ASCENDING",
        "DESCENDING",
    }
)


class GuardedStore(Protocol):
    def statement_tree(self, sql: str) -> dict[str, Any]: ...
    def files_outside(self, dataset_id: str, locations: list[str]) -> list[str]: ...
    def datasets(self) -> list[Any]: ...
    def pinned_snapshot(self) -> AbstractContextManager[None]: ...


@dataclass(slots=True)
class _Walk:
    planned: PlannedQuery
    ctes: set[str] = field(default_factory=set)
    cte_refs: list[str] = field(default_factory=list)
    file_scans: dict[int, str] = field(default_factory=dict)  # parameter -> dataset id
    runtime_scans: dict[int, str] = field(default_factory=dict)  # parameter -> runtime table
    placed: set[int] = field(default_factory=set)  # parameters seen where the planner put them


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        yield from node.items()
    elif isinstance(node, list):
        for item in node:
            yield "", item


def _parameter(expr: Any) -> int | None:
    if isinstance(expr, dict) and expr.get("class") == "CAST":
        expr = expr.get("child")
    if isinstance(expr, dict) and expr.get("class") == "PARAMETER":
        try:
            return int(expr.get("identifier", ""))
        except ValueError:
            return None
    return None


def _arguments(function: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        a.get("expression") if isinstance(a, dict) and "expression" in a else a
        for a in function.get("arguments", [])
    ]


def _check_read_parquet(walk: _Walk, function: dict[str, Any]) -> None:
    args = _arguments(function)
    n = _parameter(args[0]) if args else None
    if n is None or n not in walk.planned.file_params or args[0].get("class") != "PARAMETER":
        raise GuardViolation("read_parquet takes its files only from the planner")
    walk.file_scans[n] = walk.planned.file_params[n]
    walk.placed.add(n)
    for option in args[1:]:
        left = option.get("left") if isinstance(option, dict) else None
        right = option.get("right") if isinstance(option, dict) else None
        names = left.get("column_names") if isinstance(left, dict) else None
        if (
            option.get("type") != "COMPARE_EQUAL"
            or names is None
            or len(names) != 1
            or names[0] not in READ_PARQUET_OPTIONS
            or not isinstance(right, dict)
            or right.get("class") != "CONSTANT"
        ):
            raise GuardViolation("read_parquet options other than the planner's")


def _check_runtime_select(walk: _Walk, node: dict[str, Any]) -> None:
    """A SELECT whose FROM is a runtime table must be the planner's filtered substitution."""
    table = node["from_table"]
    name = str(table.get("table_name", "")).lower()
    where = node.get("where_clause")
    if not isinstance(where, dict) or where.get("class") != "FUNCTION":
        raise GuardViolation(f"{RUNTIME_SCHEMA}.{name} is read only through the planner's filter")
    args = _arguments(where)
    n = _parameter(args[0]) if len(args) == 2 else None
    key = args[1].get("column_names") if len(args) == 2 and isinstance(args[1], dict) else None
    if (
        name not in RUNTIME_TABLES
        or where.get("function_name") != "list_contains"
        or n is None
        or walk.planned.runtime_params.get(n) != name
        or key != [RUNTIME_TABLES[name]]
    ):
        raise GuardViolation(f"{RUNTIME_SCHEMA}.{name} is read only through the planner's filter")
    walk.runtime_scans[n] = name
    walk.placed.add(n)
    table["__checked"] = True


def _visit(walk: _Walk, node: Any) -> None:
    if isinstance(node, dict):
        kind = node.get("type")
        if "class" in node:
            _visit_expression(walk, node)
        elif isinstance(kind, str):
            if kind not in KNOWN_NODE_TYPES:
                raise GuardViolation(f"statement part {kind} is not permitted on /sql/read")
            _visit_node(walk, node, kind)
        if isinstance(node.get("cte_map"), dict):
            for entry in node["cte_map"].get("map", []):
                walk.ctes.add(str(entry.get("key", "")).lower())
    for _key, child in _children(node):
        _visit(walk, child)


def _visit_node(walk: _Walk, node: dict[str, Any], kind: str) -> None:
    if kind == "SELECT_NODE":
        source = node.get("from_table")
        if isinstance(source, dict) and source.get("type") == "BASE_TABLE" and source.get("schema_name"):
            _check_runtime_select(walk, node)
    elif kind == "RECURSIVE_CTE_NODE":
        walk.ctes.add(str(node.get("cte_name", "")).lower())
    elif kind == "BASE_TABLE":
        if node.pop("__checked", False):
            return
        if node.get("schema_name") or node.get("catalog_name"):
            raise GuardViolation(
                f"relation {node.get('schema_name')}.{node.get('table_name')} is not permitted on /sql/read"
            )
        name = str(node.get("table_name", "")).lower()
        if not name.startswith(walk.planned.cte_prefix.lower()) or not walk.planned.cte_prefix:
            raise GuardViolation(f"relation {node.get('table_name')} is not a CTE of the planner")
        walk.cte_refs.append(name)
    elif kind == "TABLE_FUNCTION":
        function = node.get("function") or {}
        name = str(function.get("function_name", "")).lower()
        if name not in TABLE_FUNCTIONS or function.get("schema") or function.get("catalog"):
            raise GuardViolation(f"table function {name} is not permitted on /sql/read")
        function["__table_function"] = True  # its FUNCTION node is this check's, not the expression pass's
        if name == "read_parquet":
            _check_read_parquet(walk, function)


def _visit_expression(walk: _Walk, node: dict[str, Any]) -> None:
    cls = node.get("class")
    if cls == "FUNCTION":
        if node.pop("__table_function", False):
            return
        name = str(node.get("function_name", "")).lower()
        if node.get("schema") or node.get("catalog"):
            raise GuardViolation(f"function {node.get('schema')}.{name} is not permitted on /sql/read")
        if DENIED_FUNCTION.match(name):
            raise GuardViolation(f"function {name} is not permitted on /sql/read")
    elif cls == "PARAMETER":
        n = _parameter(node)
        if n is None:
            raise GuardViolation("named parameters are not permitted on /sql/read")
        if n > walk.planned.param_base and n not in walk.placed:
            raise GuardViolation(f"parameter ${n} is the planner's")


def verify(store: GuardedStore, planned: PlannedQuery, allowed_dataset_ids: set[str]) -> None:
    """Raise :class:`GuardViolation` unless the planned statement reads only what the caller may read."""
    tree = store.statement_tree(planned.sql)
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        raise GuardViolation(
            f"DuckDB does not parse the planned statement as one query: {tree.get('error_message')}"
        )
    walk = _Walk(planned)
    _visit(walk, tree["statements"][0])
    unknown = [name for name in walk.cte_refs if name not in walk.ctes]
    if unknown or any(not name.startswith(planned.cte_prefix.lower()) for name in walk.ctes):
        raise GuardViolation("a relation name is neither the planner's CTE nor a dataset relation")
    readable = [d for d in store.datasets() if d.id in allowed_dataset_ids]
    keys = {"dataset_id": {d.id for d in readable}, "dataset_slug": {d.slug for d in readable}}
    for n, table in walk.runtime_scans.items():
        values = planned.params[n - planned.param_base - 1]
        if not set(values) <= keys[RUNTIME_TABLES[table]]:
            raise GuardViolation(f"{RUNTIME_SCHEMA}.{table} filter names datasets the caller may not read")
    for n, dataset_id in walk.file_scans.items():
        if dataset_id not in allowed_dataset_ids:
            raise GuardViolation(
                f"the plan reads files of dataset {dataset_id}, which the caller may not read"
            )
        outside = store.files_outside(dataset_id, planned.params[n - planned.param_base - 1])
        if outside:
            raise FilesNotListed(
                f"{len(outside)} file(s) of the plan are not listed for dataset {dataset_id} (first: {outside[0]})"
            )


def plan_verified(
    planner: Callable[..., PlannedQuery],
    expression: Any,
    store: Any,
    allowed_dataset_ids: set[str],
    param_count: int = 0,
) -> PlannedQuery:
    """``planner``'s plan, verified against the same index snapshot it was planned from
    (``store.pinned_snapshot()``): an apply committing meanwhile cannot make plan and check disagree, so any
    :class:`GuardViolation` (:class:`FilesNotListed` included) is a planner or policy bug, never a race.

    Before the pinned snapshot, the check read the index after the plan: under 20 readers during compactions
    4 of 945 reads saw a planned file already compacted away (tests/integration/e2e/test_concurrent_readers.py)."""
    with store.pinned_snapshot():
        planned = planner(expression, store, allowed_dataset_ids, param_count)
        verify(store, planned, allowed_dataset_ids)
    return planned
