"""``walduck query serve``: the SQL service and the delta consumer in one process."""

from __future__ import annotations

import typer

from walduck.config import LogFormat, LogLevel
from walduck.logs import format_option, level_option

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
    log_level: LogLevel = level_option(),
    log_format: LogFormat = format_option(),
) -> None:
    """Serve the Timestore-compatible SQL API over the live DuckDB context."""
    from sinks.service.server import serve as run
    from sinks.service.settings import IamNotConfigured, QuerySettings, require_iam_mode
    from sinks.settings import SinkSettings
    from walduck.config import load_settings
    from walduck.logs import setup_logging

    setup_logging("query", log_level, log_format)

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    query = QuerySettings(**overrides)
    try:
        require_iam_mode(query)
    except IamNotConfigured as exc:
        typer.echo(f"walduck query serve: {exc}", err=True)
        raise typer.Exit(2) from exc
    run(query, SinkSettings(), load_settings(), consume=not no_consume)
