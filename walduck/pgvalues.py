"""Catalog values read over a normal PostgreSQL connection exactly as the change records carry them.

psycopg's default loaders turn jsonb numbers into float64 and refuse timestamps outside Python's datetime
(``infinity``, years > 9999, BC). Whatever compares the catalog with the change stream or a context (the
context bootstrap, ``walduck verify``) registers :func:`exact_loaders` on its cursor: jsonb/json with
:func:`walduck.jsonexact.loads_exact`, timestamps as walduck's instant text (:func:`walduck.timeutil.pg_timestamp`;
the session must use ``DateStyle = ISO``).
"""

from __future__ import annotations

from typing import Any

from psycopg.abc import AdaptContext
from psycopg.adapt import Loader
from psycopg.types.json import set_json_loads

from walduck.jsonexact import loads_exact
from walduck.timeutil import pg_timestamp


class InstantLoader(Loader):
    """timestamp/timestamptz text -> walduck's instant text (also ±infinity, years > 9999 and BC)."""

    def load(self, data: Any) -> str:
        return pg_timestamp(bytes(data).decode())


def exact_loaders(context: AdaptContext) -> None:
    """Register the exact jsonb and instant loaders on a connection or cursor."""
    set_json_loads(loads_exact, context)
    for name in ("timestamptz", "timestamp"):
        context.adapters.register_loader(name, InstantLoader)
