"""``walduck query serve``: the SQL service and the delta consumer in one process."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def main() -> None:
    """The SQL query service."""


@app.command()
def serve(
    host: str = typer.Option(None, help="Bind address [WALDUCK_QUERY_HOST]."),
    port: int = typer.Option(None, help="HTTP port [WALDUCK_QUERY_PORT]."),
    no_consume: bool = typer.Option(
        False, "--no-consume", help="Serve only; do not apply deltas from Kafka."
    ),
) -> None:
    """Serve the Timestore-compatible SQL API over the live DuckDB context."""
    from sinks.service.server import serve as run
    from sinks.service.settings import IamNotConfigured, QuerySettings, require_iam_mode
    from sinks.settings import SinkSettings
    from walduck.config import load_settings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    query = QuerySettings(**overrides)
    try:
        require_iam_mode(query)
    except IamNotConfigured as exc:
        typer.echo(f"walduck query serve: {exc}", err=True)
        raise typer.Exit(2) from exc
    run(query, SinkSettings(), load_settings(), consume=not no_consume)
