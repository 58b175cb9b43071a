"""``/sql/exec`` parameters as node-postgres binds them (Timestore's driver), never a 500.

A JSON object is bound as ``jsonb``; an array of scalars of one type as a PostgreSQL array (psycopg's own
list adaptation); an array holding objects, arrays or scalars of different types (which no PostgreSQL
array can hold) as ``jsonb``. Cast in SQL (``$1::jsonb``, ``$1::int[]``) to be explicit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb


def bind_param(value: Any) -> Any:
    if isinstance(value, dict):
        return Jsonb(value)
    if isinstance(value, list):
        kinds = {type(v) for v in value if v is not None}
        if len(kinds) > 1 or kinds & {dict, list}:
            return Jsonb(value)
    return value


def bind_params(params: Sequence[Any]) -> list[Any]:
    return [bind_param(v) for v in params]
