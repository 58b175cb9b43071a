"""The ``walduck`` command: one entry point, each component contributes its sub-commands."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from pydantic import ValidationError

from connectors.cli import app as connector_app
from pipeline.cli import app as compactor_app
from sinks.cli import app as sinks_app
from sinks.cli import verify as verify_command
from sinks.service.cli import serve as serve_command
from stack.bench.cli import app as bench_app
from stack.catalog.cli import app as catalog_app
from stack.envnames import DIRECT_VARIABLES, settings_classes
from stack.kafka_cli import app as kafka_app
from stack.services.cli import app as services_app
from stack.workload.cli import app as workload_app
from walduck.config import LogFormat, LogLevel
from walduck.kafka_security import KafkaSecurityError
from walduck.logs import format_option, level_option


class _WalduckApp(typer.Typer):
    """Invalid settings (e.g. SASL without a mechanism) end any command at start with exit code 2; a refused
    Kafka login or TLS handshake (KafkaSecurityError) with exit code 1, each as one message, no traceback."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            problems = "\n".join(f"  {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
            print(f"walduck: invalid settings:\n{problems}", file=sys.stderr)
            raise SystemExit(2) from None
        except KafkaSecurityError as exc:
            print(f"walduck: KafkaSecurityError: {exc}", file=sys.stderr)
            raise SystemExit(1) from None


app = _WalduckApp(
    no_args_is_help=True,
    help="Keep DuckDB query contexts in step with a PostgreSQL catalog, live.",
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"walduck {version('walduck')}")
        raise typer.Exit()


@app.callback()
def _report_unknown_variables(
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    log_level: LogLevel = level_option(", for any command"),
    log_format: LogFormat = format_option(", for any command"),
) -> None:
    """A misspelt ``WALDUCK_*`` variable would be ignored silently: name it (and the closest known one), and an
    older name set beside the component's new one with another value (the new one wins).
    ``--log-level`` / ``--log-format`` here apply to whichever command follows (walduck/logs.py)."""
    import os

    if log_level or log_format:
        from walduck.logs import setup_logging

        setup_logging(level=log_level, fmt=log_format)

    from walduck.config import shadowed_variables, unknown_variables

    for variable, close in unknown_variables(os.environ, settings_classes(), DIRECT_VARIABLES):
        hint = f" (did you mean {close}?)" if close else ""
        typer.echo(
            f"walduck: warning: unknown environment variable {variable}{hint}; it has no effect", err=True
        )
    for ignored, used in shadowed_variables(os.environ, settings_classes()):
        typer.echo(
            f"walduck: warning: {ignored} is ignored: {used} is set too (with another value)", err=True
        )


app.add_typer(services_app, name="services", help="Local PostgreSQL + Kafka: start, stop, status.")
app.add_typer(catalog_app, name="catalog", help="Timestore-compatible catalog migrations.")
app.add_typer(workload_app, name="workload", help="Catalog workload generator (real Parquet files).")
app.add_typer(connector_app, name="connector", help="Logical-decoding connector: PostgreSQL -> Kafka.")
app.add_typer(compactor_app, name="compactor", help="Stream processor: change records -> per-shard deltas.")
sinks_app.command("serve", help="Run the SQL query service (and apply deltas into its contexts).")(
    serve_command
)
app.add_typer(sinks_app, name="query", help="DuckDB context shards and the SQL query service.")
app.command(
    "verify",
    help="Compare the contexts with PostgreSQL; exit 0 in step, 1 drift, 2 error (= walduck query verify).",
)(verify_command)
app.add_typer(kafka_app, name="kafka", help="Kafka-side setup: the topics, with replication and configs.")
app.add_typer(bench_app, name="bench", help="Benchmarks, each against its baseline.")


@app.command()
def up(
    data_dir: Path = typer.Option(None, help="Where services and contexts live [WALDUCK_DATA_DIR]."),
    pg_dsn: str = typer.Option(
        None, "--pg-dsn", help="Use this PostgreSQL instead of a local one [WALDUCK_PG_DSN]."
    ),
    kafka: str = typer.Option(
        None, "--kafka", help="Use this Kafka bootstrap instead of a local one [WALDUCK_KAFKA_BOOTSTRAP]."
    ),
    port: int = typer.Option(8080, help="Query service HTTP port."),
    connector_metrics_port: int = typer.Option(9101),
    compactor_metrics_port: int = typer.Option(9102),
    rate: float = typer.Option(5.0, help="Demo workload catalog commits per second."),
    datasets: int = typer.Option(3, help="Demo workload datasets."),
    duration: float = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
    keep_services: bool = typer.Option(False, help="Leave PostgreSQL and Kafka running on exit."),
    kafka_protocol: str = typer.Option(
        None, "--kafka-protocol", help="Local Kafka's listener: PLAINTEXT, SASL_PLAINTEXT, SSL, SASL_SSL."
    ),
) -> None:
    """Run everything locally: services, catalog, connector, compactor, query service and a demo workload."""
    from stack.up import run_up
    from walduck.config import load_settings

    settings = load_settings(data_dir=data_dir, pg_dsn=pg_dsn, kafka_bootstrap=kafka)
    run_up(
        settings,
        http_port=port,
        connector_metrics_port=connector_metrics_port,
        compactor_metrics_port=compactor_metrics_port,
        rate=rate,
        datasets=datasets,
        duration=duration,
        keep_services=keep_services,
        kafka_protocol=kafka_protocol,
    )


if __name__ == "__main__":
    app()
