"""The ``walduck`` command: one entry point, each component contributes its sub-commands."""

from __future__ import annotations

import typer

from connectors.cli import app as connector_app
from pipeline.cli import app as compactor_app
from sinks.cli import app as sinks_app
from walduck.bench.cli import app as bench_app
from walduck.catalog.cli import app as catalog_app
from walduck.services.cli import app as services_app
from walduck.workload.cli import app as workload_app

app = typer.Typer(
    no_args_is_help=True,
    help="Keep DuckDB query contexts in step with a PostgreSQL catalog, live.",
    pretty_exceptions_show_locals=False,
)
app.add_typer(services_app, name="services", help="Local PostgreSQL + Kafka: start, stop, status.")
app.add_typer(catalog_app, name="catalog", help="Timestore-compatible catalog migrations.")
app.add_typer(workload_app, name="workload", help="Catalog workload generator (real Parquet files).")
app.add_typer(connector_app, name="connector", help="Logical-decoding connector: PostgreSQL -> Kafka.")
app.add_typer(compactor_app, name="compactor", help="Stream processor: change records -> per-shard deltas.")
app.add_typer(sinks_app, name="query", help="DuckDB context shards and the SQL query service.")
app.add_typer(bench_app, name="bench", help="Benchmarks, each against its baseline.")

if __name__ == "__main__":
    app()
