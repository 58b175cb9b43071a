"""``walduck catalog …``: Timestore-compatible catalog migrations."""

from __future__ import annotations

import typer
from rich.console import Console

from stack.options import AdminPgDsn, CatalogSchema, PgDsn

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command()
def migrate(
    pg_dsn: AdminPgDsn = None,
    schema: CatalogSchema = None,
) -> None:
    """Create or upgrade the Timestore catalog schema (idempotent)."""
    from stack.catalog.migrate import apply_migrations
    from walduck.config import load_settings

    settings = load_settings(pg_admin_dsn=pg_dsn, catalog_schema=schema)
    if not settings.admin_dsn():
        raise typer.BadParameter(
            "no PostgreSQL DSN: pass --pg-dsn or set WALDUCK_PG_ADMIN_DSN/WALDUCK_PG_DSN"
        )
    applied = apply_migrations(settings.admin_dsn(), settings.catalog_schema)
    if applied:
        for migration_id in applied:
            console.print(f"applied [bold]{migration_id}[/]")
    else:
        console.print(f"schema [bold]{settings.catalog_schema}[/] is up to date")


@app.command()
def status(
    pg_dsn: PgDsn = None,
    schema: CatalogSchema = None,
) -> None:
    """List applied and pending migrations."""
    import psycopg

    from stack.catalog.migrate import applied_migrations, migration_files
    from walduck.config import load_settings

    settings = load_settings(pg_admin_dsn=pg_dsn, catalog_schema=schema)
    with psycopg.connect(settings.admin_dsn(), autocommit=True) as conn:
        done = applied_migrations(conn, settings.catalog_schema)
    for migration_id, _ in migration_files():
        mark = "[green]applied[/]" if migration_id in done else "[yellow]pending[/]"
        console.print(f"{mark} {migration_id}")


@app.command()
def roles(
    pg_dsn: AdminPgDsn = None,
    schema: CatalogSchema = None,
    state_schema: str = typer.Option("walduck", help="The connector's state schema."),
) -> None:
    """Create or narrow the least-privilege roles (connector, reader, exec) and their grants (idempotent).

    Role names and passwords come from WALDUCK_PG_DSN (connector), WALDUCK_PG_READ_DSN and WALDUCK_PG_EXEC_DSN
    when they name a user; run after `catalog migrate` and `connector setup`.
    """
    from stack.catalog.roles import RoleSetupError, ensure_roles, login_from
    from walduck.config import load_settings

    settings = load_settings(pg_admin_dsn=pg_dsn, catalog_schema=schema)
    admin = settings.pg_admin_dsn
    if not admin:
        raise typer.BadParameter("no admin DSN: pass --pg-dsn or set WALDUCK_PG_ADMIN_DSN")
    try:
        dsns = ensure_roles(admin, settings, state_schema=state_schema)
    except RoleSetupError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    for role, dsn in dsns.items():
        console.print(f"role [bold]{login_from(dsn, role).name}[/] ({role}) ready")
