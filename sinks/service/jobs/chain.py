"""A job's chain: scripts in path order, the tail before the head, each statement through /sql/read's checks.

* **Order**: the project's ``.sql`` paths sorted; the tail is every script before ``head_path``, the head is
  ``head_path``; later scripts are not run. ``${name}`` is replaced by the variable as a SQL literal first.
* **Statements**: a tail script may hold queries, ``CREATE [OR REPLACE] [TEMP] TABLE|VIEW <name> AS
  <query>`` (a view is materialized like a table: the layer is keyed by the data it read, so both give the
  same rows) and scalar ``CREATE [OR REPLACE] MACRO name(a, …) AS <expression>`` (inlined into every later
  statement before its checks); the head is one query. Anything else is refused with the sandbox's own message.
* **The same path as /sql/read**: each query, with references to earlier chain objects bound to placeholder
  CTEs, goes through ``sandbox.is_select_only`` and ``sandbox.check_read_sql``, then ``guard.plan_verified``
  (planner + execution guard) with the readable datasets of the job's captured principal; errors keep the
  messages /sql/read gives. Only then each placeholder CTE body (``SELECT '<nonce>' AS x``, the nonce
  unguessable and counted) is replaced by a read of the layer table, ``__wdlayer.main.<name>``: the one
  difference from the guarded text, a relation of the read-only layer file holding the tail's own objects.
* **Hashes**: ``h0`` = DuckDB version + result-affecting settings; ``h_i = sha256(h_{i-1}, path, content,
  data state)``, where the data state is, per statement, the dataset ids and the exact (pruned) partition
  file lists the planner bound. A layer is keyed by its prefix hash, so a changed dataset is a miss and
  shared prefixes share layers.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from sinks.context import guard
from sinks.context.naming import quote_ident, quote_literal
from sinks.context.scope import bind_relations
from sinks.service.jobs.exceptions import InvalidProject, ScriptRefused
from sinks.service.refusals import refusal_of
from sinks.service.sandbox import NOT_SINGLE_SELECT, PolicyViolation, check_read_sql, is_select_only

LAYER_ALIAS = "__wdlayer"
_SENTINEL = "__wdjob_"
_MACRO_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_VARIABLE = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
# settings that change what a statement returns; their values enter the base hash
RESULT_SETTINGS = (
    "TimeZone",
    "Calendar",
    "default_collation",
    "default_null_order",
    "default_order",
    "integer_division",
    "preserve_insertion_order",
    "order_by_non_integer_literal",
    "scalar_subquery_error_on_multiple_rows",
    "ieee_floating_point_ops",
    "late_materialization_max_rows",
)


@dataclass(slots=True)
class Script:
    path: str
    text: str


@dataclass(slots=True)
class Statement:
    """One statement ready to execute: ``sql`` with ``params``; ``name`` is the object a CREATE makes."""

    path: str
    kind: str  # "table" | "query" | "macro"
    sql: str
    params: list[Any]
    name: str | None = None
    or_replace: bool = False
    if_not_exists: bool = False
    dataset_ids: list[str] = field(default_factory=list)
    data_state: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def order_chain(project: dict[str, str], head_path: str) -> tuple[list[Script], Script]:
    if head_path not in project:
        raise InvalidProject(f"head_path {head_path} is not in the project tree")
    paths = sorted(p for p in project if p.endswith(".sql") or p == head_path)
    tail = [Script(p, project[p]) for p in paths if p < head_path]
    return tail, Script(head_path, project[head_path])


def sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return quote_literal(value)
    raise InvalidProject(
        f"variable values are strings, numbers, booleans or null, not {type(value).__name__}"
    )


def substitute(script: Script, variables: dict[str, Any]) -> Script:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in variables:
            raise ScriptRefused(script.path, f"unknown variable ${{{name}}}", "variables")
        return sql_literal(variables[name])

    return Script(script.path, _VARIABLE.sub(one, script.text))


def parse_script(script: Script) -> list[exp.Expression]:
    try:
        statements = [s for s in sqlglot.parse(script.text, read="duckdb") if s is not None]
    except SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise ScriptRefused(
            script.path, f"{NOT_SINGLE_SELECT} (could not parse: {first})", "sandbox"
        ) from exc
    except RecursionError as exc:
        raise ScriptRefused(
            script.path, f"{NOT_SINGLE_SELECT} (statement nested too deeply)", "sandbox"
        ) from exc
    return statements


def _sandbox_message(text: str) -> str:
    """What /sql/read answers for ``text``."""
    if not is_select_only(text):
        return NOT_SINGLE_SELECT
    try:
        check_read_sql(text)
    except PolicyViolation as exc:
        return exc.message
    return NOT_SINGLE_SELECT


def _with_chain_objects(
    query: exp.Expression, objects: set[str], nonce: str
) -> tuple[exp.Expression, list[str]]:
    """``query`` with a placeholder CTE for every unbound bare reference to an earlier chain object."""
    tree = query.copy()
    names: list[str] = []
    for binding in bind_relations(tree):
        table = binding.table
        if (
            binding.kind == "refused"
            and not table.args.get("db")
            and not table.args.get("catalog")
            and isinstance(table.this, exp.Identifier)
            and binding.name in objects
            and binding.name not in names
        ):
            names.append(binding.name)
    if not names:
        return tree, []
    if isinstance(tree, exp.Subquery):
        tree = exp.select("*").from_(tree)
    ctes = [
        exp.CTE(
            this=sqlglot.parse_one(f"SELECT '{_SENTINEL}{nonce}_{i}' AS x", read="duckdb"),
            alias=exp.TableAlias(this=exp.to_identifier(name)),
        )
        for i, name in enumerate(names)
    ]
    existing = tree.args.get("with_")
    if existing is not None:
        existing.set("expressions", [*ctes, *existing.expressions])
    else:
        tree.set("with_", exp.With(expressions=ctes))
    return tree, names


def _map_plan_error(path: str, exc: Exception, reads_everything: bool) -> ScriptRefused | None:
    """The planner's and guard's refusals worded as /sql/read words them (one mapping: refusals.py)."""
    refusal = refusal_of(exc, reads_everything)
    if refusal is None:
        return None
    kind = {"unknown": "forbidden"}.get(refusal.kind, refusal.kind)
    refused = ScriptRefused(path, refusal.message, kind)
    if refusal.dataset is not None:
        refused.dataset = refusal.dataset
    return refused


@dataclass(slots=True)
class ChainPlanner:
    """Plans statements for one principal: ``allowed`` dataset ids, ``reads_everything`` = admin scope."""

    store: Any
    planner: Callable[..., Any]
    allowed: set[str]
    reads_everything: bool
    # chain macros defined so far: name -> (parameters, body with earlier macros expanded)
    macros: dict[str, tuple[list[str], exp.Expression]] = field(default_factory=dict)

    def query(self, path: str, query: exp.Expression, objects: set[str]) -> Statement:
        nonce = secrets.token_hex(8)
        tree, refs = _with_chain_objects(query, objects, nonce)
        text = tree.sql(dialect="duckdb")
        if not is_select_only(text):
            raise ScriptRefused(path, NOT_SINGLE_SELECT, "sandbox")
        try:
            checked = check_read_sql(text)
        except PolicyViolation as exc:
            raise ScriptRefused(path, exc.message, "sandbox") from exc
        if checked.param_count:
            raise ScriptRefused(path, "jobs take ${name} variables, not ? or $n parameters", "sandbox")
        try:
            planned = guard.plan_verified(self.planner, checked.expression, self.store, self.allowed, 0)
        except Exception as exc:
            mapped = _map_plan_error(path, exc, self.reads_everything)
            if mapped is None:
                raise
            raise mapped from exc
        if planned.runtime_params:
            raise ScriptRefused(path, "timestore_runtime.* is not available to jobs", "sandbox")
        sql = planned.sql
        pattern = re.compile(rf"SELECT '{_SENTINEL}{nonce}_(\d+)' AS x")
        found = pattern.findall(sql)
        if sorted(int(i) for i in found) != list(range(len(refs))):
            raise ScriptRefused(
                path, "Statement is not permitted on /sql/read (chain reference lost)", "guard"
            )
        sql = pattern.sub(
            lambda m: f"SELECT * FROM {LAYER_ALIAS}.main.{quote_ident(refs[int(m.group(1))])}", sql
        )
        state: dict[str, list[str]] = {}
        for n, dataset_id in planned.file_params.items():
            files = planned.params[n - planned.param_base - 1]
            state.setdefault(dataset_id, [])
            state[dataset_id] = sorted(set(state[dataset_id]) | set(files))
        return Statement(
            path=path,
            kind="query",
            sql=sql,
            params=planned.all_params([]),
            dataset_ids=list(planned.dataset_ids),
            data_state=state,
            warnings=list(planned.warnings),
        )

    def macro(self, path: str, node: exp.Create) -> Statement:
        """``CREATE [OR REPLACE] MACRO name(a, b) AS <expression>``: kept here and inlined into every later
        statement before its checks (the sandbox sees the expanded text); nothing is executed for it."""
        udf = node.this
        target = udf.this if isinstance(udf, exp.UserDefinedFunction) else None
        body = node.expression
        if not isinstance(target, exp.Table) or target.args.get("db") or target.args.get("catalog"):
            raise ScriptRefused(path, "macros are named without a schema", "sandbox")
        if body is None or (isinstance(body, exp.Query) and not isinstance(body, exp.Subquery)):
            raise ScriptRefused(path, "table macros are not supported in jobs; use a view", "sandbox")
        name = target.name.lower()
        if not _MACRO_NAME.fullmatch(name):
            raise ScriptRefused(path, f"macro name {name} is not a plain identifier", "sandbox")
        probe = sqlglot.parse_one(f"SELECT {name}(1)", read="duckdb").selects[0]
        if not isinstance(probe, exp.Anonymous):
            raise ScriptRefused(path, f"macro {name} would shadow the built-in function {name}", "sandbox")
        params = [p.name.lower() for p in udf.expressions if isinstance(p, exp.Identifier)]
        if len(params) != len(udf.expressions) or len(set(params)) != len(params):
            raise ScriptRefused(path, f"macro {name}: parameters are distinct plain names", "sandbox")
        if name in self.macros and not node.args.get("replace"):
            raise ScriptRefused(path, f"macro {name} already exists (use CREATE OR REPLACE MACRO)", "sandbox")
        self.macros[name] = (params, self.expand(path, body))
        return Statement(path=path, kind="macro", sql="", params=[], name=None)

    def expand(self, path: str, tree: exp.Expression) -> exp.Expression:
        """``tree`` with every call of a chain macro replaced by its body, arguments substituted."""
        if not self.macros:
            return tree

        def inline(node: exp.Expression) -> exp.Expression:
            if not isinstance(node, exp.Anonymous) or str(node.name).lower() not in self.macros:
                return node
            name = str(node.name).lower()
            params, body = self.macros[name]
            args = [self.expand(path, a) for a in node.expressions]
            if len(args) != len(params):
                raise ScriptRefused(
                    path, f"macro {name} takes {len(params)} argument(s), not {len(args)}", "sandbox"
                )
            mapping = dict(zip(params, args, strict=True))

            def substitute_param(n: exp.Expression) -> exp.Expression:
                if isinstance(n, exp.Column) and not n.table and n.name.lower() in mapping:
                    return exp.Paren(this=mapping[n.name.lower()].copy())
                return n

            return exp.Paren(this=body.copy().transform(substitute_param))

        return tree.transform(inline)

    def statement(self, path: str, node: exp.Expression, objects: set[str], *, head: bool) -> Statement:
        if isinstance(node, exp.Query):
            return self.query(path, self.expand(path, node), objects)
        if isinstance(node, exp.Create) and not head:
            kind = str(node.args.get("kind") or "").upper()
            target = node.this
            query = node.expression
            if kind in ("TABLE", "VIEW") and isinstance(query, exp.Query) and isinstance(target, exp.Table):
                if target.args.get("db") or target.args.get("catalog"):
                    raise ScriptRefused(
                        path, f"chain objects are named without a schema: {target.sql()}", "sandbox"
                    )
                planned = self.query(path, self.expand(path, query), objects)
                planned.kind = "table"
                planned.name = target.name.lower()
                planned.or_replace = bool(node.args.get("replace"))
                planned.if_not_exists = bool(node.args.get("exists"))
                return planned
            if kind in ("MACRO", "FUNCTION"):
                return self.macro(path, node)
        message = _sandbox_message(node.sql(dialect="duckdb"))
        if head:
            message = f"{message} (the head is one query)"
        raise ScriptRefused(path, message, "sandbox")


def settings_fingerprint() -> dict[str, Any]:
    """DuckDB's version and the result-affecting settings of a fresh job instance."""
    conn = duckdb.connect(":memory:")
    try:
        rows = conn.execute(
            "SELECT name, value FROM duckdb_settings() WHERE list_contains(?, name) ORDER BY name",
            [list(RESULT_SETTINGS)],
        ).fetchall()
    finally:
        conn.close()
    return {"duckdb": duckdb.__version__, "settings": dict(rows)}


def base_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(
        b"walduck-job-layer-v1\0" + orjson.dumps(fingerprint, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def step_hash(previous: str, script: Script, statements: list[Statement]) -> str:
    """The hash of the tail prefix ending with ``script`` (its text after variable substitution)."""
    data = [{"kind": s.kind, "name": s.name, "state": s.data_state} for s in statements]
    payload = orjson.dumps(
        {"prev": previous, "path": script.path, "text": script.text, "data": data},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(payload).hexdigest()
