"""Query planner: rewrite ``timestore.<view>`` references into pruned explicit-file relations.

Every ``timestore.<view>`` table reference (top level, CTEs, subqueries, joins) becomes
``(<relation_sql>) AS <alias>``, where the relation lists only the visible partitions overlapping the
time range that the WHERE clause of the *same* SELECT pins on the dataset's timestamp column. Bounds
come from conjunctive comparisons with literals (``>, >=, <, <=, =, BETWEEN``, string or
``TIMESTAMP '…'``/``DATE '…'`` literals); they are widened to inclusive bounds, so pruning only ever
drops files whose every row the WHERE rejects. ``timestore_runtime.*`` becomes the same view filtered to
the caller's datasets. Anything else (other schemas, file-reading table functions, ``'file.parquet'``
replacement scans) is refused: the sandbox allows the whole storage root, so the planner is what keeps a
caller inside the datasets it may read.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from sinks.context.exceptions import (
    AmbiguousRelation,
    ForbiddenDataset,
    ForbiddenFunction,
    PlanError,
    UnknownRelation,
    UnsupportedStatement,
)
from sinks.context.naming import RUNTIME_SCHEMA, VIEW_SCHEMA
from sinks.context.scope import Binding, bind_relations

if TYPE_CHECKING:
    from sinks.context.store import ContextStore, DatasetView

RUNTIME_TABLES = {"datasets": "dataset_id", "partitions": "dataset_slug", "columns": "dataset_slug"}


@dataclass(slots=True)
class PlannedQuery:
    sql: str
    dataset_ids: list[str]
    warnings: list[str] = field(default_factory=list)
    # parameters after the client's: $<param_base + 1> … (file lists, runtime filters)
    params: list[Any] = field(default_factory=list)
    param_base: int = 0
    # parameter number -> dataset id whose files it lists / runtime table it filters
    file_params: dict[int, str] = field(default_factory=dict)
    runtime_params: dict[int, str] = field(default_factory=dict)
    # every CTE of the statement is named <cte_prefix>c<n>
    cte_prefix: str = ""

    def all_params(self, client_params: list[Any]) -> list[Any]:
        return [*client_params, *self.params]


@dataclass(slots=True)
class TimeBounds:
    start: datetime | None = None
    end: datetime | None = None

    def narrow(self, lo: datetime | None, hi: datetime | None) -> None:
        if lo is not None and (self.start is None or lo > self.start):
            self.start = lo
        if hi is not None and (self.end is None or hi < self.end):
            self.end = hi


# ----------------------------------------------------------------------------- predicates
def literal_timestamp(node: exp.Expression) -> tuple[datetime, bool] | None:
    """A string / TIMESTAMP / DATE literal as naive UTC; bool = it carried a UTC offset (bound widened)."""
    while isinstance(node, (exp.Cast, exp.TryCast, exp.Paren)):
        if isinstance(node, (exp.Cast, exp.TryCast)):
            to = node.args.get("to")
            if to is not None and not to.is_type(*exp.DataType.TEMPORAL_TYPES, exp.DataType.Type.TEXT):
                return None
        node = node.this
    if not isinstance(node, exp.Literal) or not node.is_string:
        return None
    text = node.this.strip()
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    if ts.tzinfo is not None:
        return ts.astimezone(UTC).replace(tzinfo=None), True
    return ts, False


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    if isinstance(node, exp.Where):
        node = node.this
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _is_column(node: exp.Expression, column: str, qualifiers: set[str]) -> bool:
    if not isinstance(node, exp.Column) or node.name.lower() != column.lower():
        return False
    table = node.table
    return not table or table.lower() in qualifiers


_FLIP = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE, exp.EQ: exp.EQ}
_SLACK = timedelta(days=1)  # for literals with an offset: the column is compared in the session time zone


def extract_time_bounds(where: exp.Expression | None, column: str, qualifiers: set[str]) -> TimeBounds:
    """Inclusive [start, end] implied by the conjunctive predicates on ``column`` (None = unbounded)."""
    bounds = TimeBounds()
    for pred in _conjuncts(where):
        if isinstance(pred, exp.Between) and _is_column(pred.this, column, qualifiers):
            lo, hi = literal_timestamp(pred.args["low"]), literal_timestamp(pred.args["high"])
            bounds.narrow(
                (lo[0] - _SLACK if lo[1] else lo[0]) if lo else None,
                (hi[0] + _SLACK if hi[1] else hi[0]) if hi else None,
            )
            continue
        kind = type(pred)
        if kind not in _FLIP:
            continue
        left, right = pred.this, pred.expression
        if _is_column(right, column, qualifiers) and not _is_column(left, column, qualifiers):
            left, right, kind = right, left, _FLIP[kind]
        if not _is_column(left, column, qualifiers):
            continue
        lit = literal_timestamp(right)
        if lit is None:
            continue
        value, has_tz = lit
        lo_v, hi_v = (value - _SLACK, value + _SLACK) if has_tz else (value, value)
        if kind in (exp.GT, exp.GTE):
            bounds.narrow(lo_v, None)
        elif kind in (exp.LT, exp.LTE):
            bounds.narrow(None, hi_v)
        else:
            bounds.narrow(lo_v, hi_v)
    return bounds


# ----------------------------------------------------------------------------- resolution
def resolve_dataset(store: ContextStore, name: str, allowed: set[str]) -> DatasetView:
    candidates = store.resolve_relation(name)
    if not candidates:
        raise UnknownRelation(f"{VIEW_SCHEMA}.{name}")
    permitted = [c for c in candidates if c.id in allowed]
    if not permitted:
        raise ForbiddenDataset(candidates[0].slug)
    if permitted[0].slug == name or len(permitted) == 1:
        return permitted[0]
    raise AmbiguousRelation(f"{VIEW_SCHEMA}.{name}", sorted(c.slug for c in permitted))


def _runtime_sql(table: str, views: list[DatasetView], bind: Callable[[Any], str]) -> str:
    key = RUNTIME_TABLES[table]
    values = [v.id for v in views] if key == "dataset_id" else [v.slug for v in views]
    return f"SELECT * FROM {RUNTIME_SCHEMA}.{table} WHERE list_contains({bind(values)}::VARCHAR[], {key})"


def _refused(binding: Binding) -> PlanError:
    if binding.table.this is not None and isinstance(binding.table.this, exp.Func):
        return ForbiddenFunction(binding.name)
    return UnknownRelation(binding.table.sql(dialect="duckdb"))


def plan(
    expression: exp.Expression, store: ContextStore, allowed_dataset_ids: set[str], param_count: int = 0
) -> PlannedQuery:
    """The statement DuckDB runs: CTEs renamed, relations substituted, files bound as parameters.

    1. Bind every table reference (``scope.bind_relations``); anything unbound is refused.
    2. Rename every CTE, and every reference bound to it, to ``__wd_<nonce>_c<n>`` (aliased with the
       client's name, so ``x.col`` still resolves): DuckDB can bind such a reference only to that CTE.
    3. Replace ``timestore.<view>`` with the dataset's pruned relation and ``timestore_runtime.<t>`` with
       the runtime table filtered to the caller's datasets; file lists and the filter are parameters
       ``$<param_count + 1> …`` (``PlannedQuery.params``), never SQL text.
    """
    if not isinstance(expression, exp.Query):
        raise UnsupportedStatement(f"only queries can be planned, not {type(expression).__name__}")
    tree = expression.copy()
    bindings = bind_relations(tree)
    prefix = f"__wd_{uuid.uuid4().hex[:12]}_"
    planned = PlannedQuery(sql="", dataset_ids=[], cte_prefix=prefix, param_base=param_count)

    def bind(value: Any) -> str:
        planned.params.append(value)
        return f"${param_count + len(planned.params)}"

    cte_names = {id(cte): f"{prefix}c{n}" for n, cte in enumerate(tree.find_all(exp.CTE))}
    substitutions: list[str] = []
    allowed_views: list[DatasetView] | None = None
    for binding in bindings:
        if binding.kind == "function":
            continue
        if binding.kind == "refused":
            raise _refused(binding)
        table = binding.table
        alias = table.args.get("alias") or exp.TableAlias(this=table.this.copy())
        if binding.kind == "cte":
            assert binding.cte is not None
            new_name = cte_names[id(binding.cte)]
        elif binding.kind == "runtime":
            if allowed_views is None:
                allowed_views = [v for v in store.datasets() if v.id in allowed_dataset_ids]
            new_name = f"{prefix}r{len(substitutions)}"
            substitutions.append(_runtime_sql(binding.name, allowed_views, bind))
            planned.runtime_params[param_count + len(planned.params)] = binding.name
        else:
            view = resolve_dataset(store, table.name, allowed_dataset_ids)
            select = table.find_ancestor(exp.Select)
            bounds = (
                extract_time_bounds(
                    select.args.get("where"), view.timestamp_column, {alias.name.lower(), table.name.lower()}
                )
                if select is not None
                else TimeBounds()
            )

            def bind_files(files: list[str], dataset_id: str = view.id) -> str:
                placeholder = bind(files)
                planned.file_params[param_count + len(planned.params)] = dataset_id
                return placeholder

            sql, rel_warnings = store.relation_sql(view.id, bounds.start, bounds.end, bind=bind_files)
            new_name = f"{prefix}r{len(substitutions)}"
            substitutions.append(sql)
            if view.id not in planned.dataset_ids:
                planned.dataset_ids.append(view.id)
            planned.warnings.extend(w for w in rel_warnings if w not in planned.warnings)
            if view.alias_warning and view.alias_warning not in planned.warnings:
                planned.warnings.append(view.alias_warning)
        table.set("this", exp.to_identifier(new_name))
        table.set("db", None)
        table.set("catalog", None)
        table.set("alias", alias.copy())
    for cte in tree.find_all(exp.CTE):
        cte.args["alias"].set("this", exp.to_identifier(cte_names[id(cte)]))

    for column in tree.find_all(exp.Column):
        db = column.args.get("db")
        if db is not None and column.db.lower() in (VIEW_SCHEMA, RUNTIME_SCHEMA):
            column.set("db", None)
            column.set("catalog", None)

    text = tree.sql(dialect="duckdb")
    relation = re.compile(rf"\b{re.escape(prefix)}r(\d+)\b")
    planned.sql = relation.sub(lambda m: f"({substitutions[int(m.group(1))]})", text)
    return planned
