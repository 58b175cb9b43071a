"""Command-line options several ``walduck`` commands share: one definition each (issue 14).

Use as the parameter's type, with ``None`` as its default (the setting's environment variable, then its
default, apply when the option is not given: :func:`walduck.config.load_settings`)::

    def run(pg_dsn: PgDsn = None, schema: CatalogSchema = None, storage_root: StorageRoot = None) -> None: ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PgDsn = Annotated[str | None, typer.Option("--pg-dsn", help="PostgreSQL DSN [WALDUCK_PG_DSN].")]
AdminPgDsn = Annotated[
    str | None,
    typer.Option("--pg-dsn", help="Admin PostgreSQL DSN [WALDUCK_PG_ADMIN_DSN, else WALDUCK_PG_DSN]."),
]
CatalogSchema = Annotated[
    str | None, typer.Option("--schema", help="Catalog schema [WALDUCK_CATALOG_SCHEMA].")
]
StorageRoot = Annotated[
    Path | None, typer.Option("--storage-root", help="Local storage root [WALDUCK_STORAGE_ROOT].")
]
