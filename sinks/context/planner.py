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

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlglot import exp

from sinks.context.naming import RUNTIME_SCHEMA, VIEW_SCHEMA, quote_literal

if TYPE_CHECKING:
    from sinks.context.store import ContextStore, DatasetView

RUNTIME_TABLES = {"datasets": "dataset_id", "partitions": "dataset_slug", "columns": "dataset_slug"}
ALLOWED_TABLE_FUNCTIONS = {"range", "generate_series"}


class PlanError(ValueError):
    """Base of the planner's named errors."""


class UnknownRelation(PlanError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown relation {name}")
        self.name = name


class AmbiguousRelation(UnknownRelation):
    def __init__(self, name: str, slugs: list[str]) -> None:
        PlanError.__init__(self, f"relation {name} is ambiguous: datasets {', '.join(slugs)} share it")
        self.name = name
        self.slugs = slugs


class ForbiddenDataset(PlanError):
    def __init__(self, slug: str) -> None:
        super().__init__(f"not allowed to read dataset {slug}")
        self.slug = slug


class ForbiddenFunction(PlanError):
    def __init__(self, name: str) -> None:
        super().__init__(f"table function {name} is not allowed")
        self.name = name


class UnsupportedStatement(PlanError):
    """Only queries (SELECT, set operations, WITH …) can be planned."""


@dataclass(slots=True)
class PlannedQuery:
    sql: str
    dataset_ids: list[str]
    warnings: list[str] = field(default_factory=list)


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


def _cte_names(expression: exp.Expression) -> set[str]:
    return {cte.alias_or_name.lower() for cte in expression.find_all(exp.CTE)}


def _runtime_sql(table: str, views: list[DatasetView]) -> str:
    key = RUNTIME_TABLES[table]
    values = [v.id for v in views] if key == "dataset_id" else [v.slug for v in views]
    items = ", ".join(quote_literal(x) for x in values)
    return f"SELECT * FROM {RUNTIME_SCHEMA}.{table} WHERE list_contains([{items}]::VARCHAR[], {key})"


def plan(expression: exp.Expression, store: ContextStore, allowed_dataset_ids: set[str]) -> PlannedQuery:
    if not isinstance(expression, exp.Query):
        raise UnsupportedStatement(f"only queries can be planned, not {type(expression).__name__}")
    tree = expression.copy()
    ctes = _cte_names(tree)
    nonce = uuid.uuid4().hex[:12]
    substitutions: dict[str, str] = {}
    dataset_ids: list[str] = []
    warnings: list[str] = []
    allowed_views: list[DatasetView] | None = None

    for table in list(tree.find_all(exp.Table)):
        if not isinstance(table.this, exp.Identifier):
            fname = table.this.sql_name() if isinstance(table.this, exp.Func) else type(table.this).__name__
            if isinstance(table.this, exp.Anonymous):
                fname = str(table.this.this)
            if fname.lower() in ALLOWED_TABLE_FUNCTIONS:
                continue
            raise ForbiddenFunction(fname)
        name, db = table.name, table.db
        if table.catalog:
            raise UnknownRelation(table.sql(dialect="duckdb"))
        if not db:
            if name.lower() in ctes:
                continue
            raise UnknownRelation(name)
        placeholder = f"__wd_{nonce}_{len(substitutions)}"
        if db.lower() == RUNTIME_SCHEMA and name.lower() in RUNTIME_TABLES:
            if allowed_views is None:
                allowed_views = [v for v in store.datasets() if v.id in allowed_dataset_ids]
            substitutions[placeholder] = _runtime_sql(name.lower(), allowed_views)
        elif db.lower() == VIEW_SCHEMA:
            view = resolve_dataset(store, name, allowed_dataset_ids)
            alias = table.alias_or_name
            select = table.find_ancestor(exp.Select)
            bounds = (
                extract_time_bounds(
                    select.args.get("where"), view.timestamp_column, {alias.lower(), name.lower()}
                )
                if select is not None
                else TimeBounds()
            )
            sql, rel_warnings = store.relation_sql(view.id, bounds.start, bounds.end)
            substitutions[placeholder] = sql
            if view.id not in dataset_ids:
                dataset_ids.append(view.id)
            warnings.extend(w for w in rel_warnings if w not in warnings)
            if view.alias_warning and view.alias_warning not in warnings:
                warnings.append(view.alias_warning)
        else:
            raise UnknownRelation(f"{db}.{name}")
        alias_node = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(name))
        replacement = exp.Table(this=exp.to_identifier(placeholder), alias=alias_node.copy())
        table.replace(replacement)

    for column in tree.find_all(exp.Column):
        db = column.args.get("db")
        if db is not None and column.db.lower() in (VIEW_SCHEMA, RUNTIME_SCHEMA):
            column.set("db", None)
            column.set("catalog", None)

    text = tree.sql(dialect="duckdb")
    for placeholder, sql in substitutions.items():
        text = text.replace(placeholder, f"({sql})")
    return PlannedQuery(sql=text, dataset_ids=dataset_ids, warnings=warnings)
