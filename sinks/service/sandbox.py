"""The /sql/read sandbox: exactly one read-only SELECT over the context's own relations.

Two checks, in this order (they mirror Timestore's error ordering, Timestore's SQL HTTP API contract):

1. :func:`is_select_only` — Timestore's textual test (leading comments stripped; must start with
   ``select``, or ``with`` and contain ``select``; no second statement after a ``;``). A failure is the
   exact Timestore 400 ``Only single SELECT statements are permitted on /sql/read``.
2. :func:`check_read_sql` — a real parse with sqlglot (DuckDB dialect). Allowed: one statement whose
   root is a SELECT, a set operation or a parenthesised query, containing no DML/DDL/command node.
   Relations are ALLOW-listed: every table reference must bind (``sinks/context/scope.py``, the one rule
   the planner shares) to ``timestore.<view>``, ``timestore_runtime.<table>``, a CTE in scope as DuckDB
   scopes it, ``range``/``generate_series``/``unnest``, or inline ``VALUES``. Functions that reach outside
   the context (``read_*``, ``*_scan``, ``glob``, ``query``, ``getenv``, ``current_setting``,
   ``duckdb_*`` …) are rejected wherever they appear.

What runs is always the statement **re-rendered from the checked tree** (by the planner, which renames
every CTE to a name of its own), never the client's text, so comment or quoting tricks that parse
differently in DuckDB cannot smuggle anything past the check. Two layers stand behind this one: the
execution guard (``sinks/context/guard.py``) re-checks the exact executed statement with DuckDB's own
parser and the files against the partition index, and DuckDB's sandbox settings
(``enable_external_access=false``, ``allowed_directories``, ``lock_configuration``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from sinks.context.scope import ALLOWED_TABLE_FUNCTIONS, DENIED_FUNCTION, bind_relations
from walduck.errors import WalduckError

NOT_SINGLE_SELECT = "Only single SELECT statements are permitted on /sql/read"
VIEW_SCHEMA = "timestore"
RUNTIME_SCHEMA = "timestore_runtime"
ALLOWED_SCHEMAS = frozenset({VIEW_SCHEMA, RUNTIME_SCHEMA})

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


class PolicyViolation(WalduckError):
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
    # parameters the statement takes ($1 … $param_count after normalize_placeholders)
    param_count: int = 0


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


# --- parameters -------------------------------------------------------------------------------


def normalize_placeholders(sql: str) -> tuple[str, int]:
    """Every ``?`` written as the ``$n`` DuckDB gives it; returns (sql, highest parameter number).

    DuckDB numbers the *i*-th parameter of the text ``$i`` when it is a ``?`` (``SELECT ?, $1`` takes one
    value, ``SELECT $1, ?`` two). Numbered here, in the client's text and before any rewrite, so a
    re-rendered statement (sqlglot moves DuckDB's ``FROM … SELECT`` clauses) still binds each value where
    the client wrote it, and the planner can add parameters of its own after them. ``?::INT`` (one
    ``?::`` token to sqlglot, which then fails to parse it) becomes ``$1::INT``. Named ``$name``
    parameters are refused.
    """
    try:
        tokens = DuckDB().tokenize(sql)
    except SqlglotError as exc:
        raise PolicyViolation(f"{NOT_SINGLE_SELECT} (could not parse: {str(exc).splitlines()[0]})") from exc
    out: list[str] = []
    last = highest = position = 0
    for i, token in enumerate(tokens):
        if token.token_type in (TokenType.PLACEHOLDER, TokenType.QDCOLON) and token.text.startswith("?"):
            position += 1
            out.append(sql[last : token.start])
            out.append(f"${position}")
            last = token.start + 1  # keeps the rest of a ``?::`` token
            highest = max(highest, position)
        elif token.token_type is TokenType.PARAMETER and token.text == "$":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is None or nxt.token_type is not TokenType.NUMBER or nxt.start != token.end + 1:
                raise PolicyViolation("Named parameters are not supported on /sql/read; use ? or $1, $2 …")
            position += 1
            highest = max(highest, int(nxt.text))
    out.append(sql[last:])
    return "".join(out), highest


# --- 2. the parse-tree sandbox -----------------------------------------------------------------


def function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _check_tables(root: exp.Expression, checked: CheckedQuery) -> None:
    """Every table reference must bind (sinks/context/scope.py); dataset and runtime names are collected."""
    for binding in bind_relations(root):
        if binding.kind == "refused":
            raise PolicyViolation(binding.problem or "Relation is not permitted on /sql/read")
        if binding.kind == "dataset":
            checked.views.add(binding.name)
        elif binding.kind == "runtime":
            checked.runtime_tables.add(binding.name)


def check_read_sql(sql: str) -> CheckedQuery:
    """Parse and check one /sql/read statement; raises :class:`PolicyViolation`."""
    sql, param_count = normalize_placeholders(sql)
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
    checked = CheckedQuery(expression=root, param_count=param_count)
    _check_tables(root, checked)
    for node in root.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise PolicyViolation(f"{NOT_SINGLE_SELECT} ({node.key.upper()} is not allowed)")
        if isinstance(node, exp.Select) and node.args.get("into") is not None:
            raise PolicyViolation(f"{NOT_SINGLE_SELECT} (SELECT … INTO is not allowed)")
        if isinstance(node, exp.Lateral):
            inner = node.this
            if isinstance(inner, exp.Func) and function_name(inner) not in ALLOWED_TABLE_FUNCTIONS:
                raise PolicyViolation(f"Table function {function_name(inner)} is not permitted on /sql/read")
        elif isinstance(node, exp.Func):
            name = function_name(node)
            if DENIED_FUNCTION.match(name):
                raise PolicyViolation(f"Function {name} is not permitted on /sql/read")
    return checked
