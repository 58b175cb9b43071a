"""``walduck catalog …``: Timestore-compatible catalog migrations."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command()
def migrate(
    pg_dsn: str = typer.Option(None, "--pg-dsn", help="PostgreSQL DSN [WALDUCK_PG_DSN]."),
    schema: str = typer.Option(None, "--schema", help="Catalog schema [WALDUCK_CATALOG_SCHEMA]."),
) -> None:
    """Create or upgrade the Timestore catalog schema (idempotent)."""
    from stack.catalog.migrate import apply_migrations
    from walduck.config import load_settings

    settings = load_settings(pg_dsn=pg_dsn, catalog_schema=schema)
    if not settings.pg_dsn:
        raise typer.BadParameter("no PostgreSQL DSN: pass --pg-dsn or set WALDUCK_PG_DSN")
    applied = apply_migrations(settings.pg_dsn, settings.catalog_schema)
    if applied:
        for migration_id in applied:
            console.print(f"applied [bold]{migration_id}[/]")
    else:
        console.print(f"schema [bold]{settings.catalog_schema}[/] is up to date")


@app.command()
def status(
    pg_dsn: str = typer.Option(None, "--pg-dsn", help="PostgreSQL DSN [WALDUCK_PG_DSN]."),
    schema: str = typer.Option(None, "--schema", help="Catalog schema [WALDUCK_CATALOG_SCHEMA]."),
) -> None:
    """List applied and pending migrations."""
    import psycopg

    from stack.catalog.migrate import applied_migrations, migration_files
    from walduck.config import load_settings

    settings = load_settings(pg_dsn=pg_dsn, catalog_schema=schema)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        done = applied_migrations(conn, settings.catalog_schema)
    for migration_id, _ in migration_files():
        mark = "[green]applied[/]" if migration_id in done else "[yellow]pending[/]"
        console.print(f"{mark} {migration_id}")
