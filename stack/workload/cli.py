"""``walduck workload …``: drive Timestore-shaped catalog writes (real Parquet files)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stack.options import CatalogSchema, PgDsn, StorageRoot
from walduck.config import WalduckSettings, load_settings
from walduck.lsn import format_lsn

app = typer.Typer(no_args_is_help=True)
console = Console()


def _settings(pg_dsn: str | None, schema: str | None, storage_root: Path | None) -> WalduckSettings:
    settings = load_settings(pg_dsn=pg_dsn, catalog_schema=schema, storage_root=storage_root)
    if not settings.pg_dsn:
        raise typer.BadParameter("no PostgreSQL DSN: pass --pg-dsn or set WALDUCK_PG_DSN")
    return settings


@app.command()
def run(
    datasets: int = typer.Option(3, help="Datasets to write to (created when missing)."),
    days: int = typer.Option(3, help="Day shards per dataset."),
    partitions_per_shard: int = typer.Option(8, help="Soft cap: full shards get compaction/retention."),
    rate: float = typer.Option(5.0, help="Target catalog commits per second (0 = as fast as possible)."),
    duration: float = typer.Option(30.0, help="Seconds to run."),
    seed: int = typer.Option(0, help="Seed of the deterministic shape mix and ids."),
    pg_dsn: PgDsn = None,
    schema: CatalogSchema = None,
    storage_root: StorageRoot = None,
) -> None:
    """Run a deterministic random mix of Timestore's write shapes at a target commit rate."""
    from stack.workload.generator import RunSummary, Workload

    settings = _settings(pg_dsn, schema, storage_root)
    with (
        Workload(
            settings.pg_dsn, settings.catalog_schema, settings.resolved_storage_root(), seed=seed
        ) as workload,
        Progress(
            TextColumn("[bold]workload"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("run", total=duration, status="")
        t0 = time.monotonic()

        def tick(summary: RunSummary) -> None:
            progress.update(
                task,
                completed=min(duration, time.monotonic() - t0),
                status=f"{summary.commits} commits, {summary.partitions_added} partitions",
            )

        result = workload.run(
            datasets=datasets,
            days=days,
            partitions_per_shard=partitions_per_shard,
            rate=rate,
            duration=duration,
            on_progress=tick,
        )
        progress.update(task, completed=duration)
    table = Table(title="workload summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("commits", str(result.commits))
    table.add_row("commit rate /s", f"{result.commit_rate:.1f}")
    for shape, count in sorted(result.operations.items()):
        table.add_row(f"  {shape}", str(count))
    table.add_row("partitions added / removed", f"{result.partitions_added} / {result.partitions_removed}")
    table.add_row("rows written", str(result.rows_written))
    table.add_row("WAL", f"{format_lsn(result.first_lsn)} → {format_lsn(result.last_lsn)}")
    console.print(table)


@app.command()
def bulk(
    datasets: int = typer.Option(10, help="Datasets to create."),
    partitions: int = typer.Option(100_000, help="Partition rows in total."),
    days: int = typer.Option(30, help="Day shards per dataset."),
    files: str = typer.Option("shared", help="shared (hard links to a few real files) | real | synthetic."),
    seed: int = typer.Option(0),
    pg_dsn: PgDsn = None,
    schema: CatalogSchema = None,
    storage_root: StorageRoot = None,
) -> None:
    """Create a large catalog fast with COPY (see stack.workload.bulk for the file modes)."""
    from stack.workload.bulk import bulk_load

    settings = _settings(pg_dsn, schema, storage_root)
    with Progress(
        TextColumn("[bold]bulk"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("bulk", total=partitions)
        summary = bulk_load(
            settings.pg_dsn,
            settings.catalog_schema,
            settings.resolved_storage_root(),
            datasets=datasets,
            partitions=partitions,
            days=days,
            files=files,
            seed=seed,
            on_progress=lambda done: progress.update(task, completed=done),
        )
    console.print(
        f"{summary.partitions} partitions in {summary.manifests} manifests of {summary.datasets} datasets "
        f"in {summary.elapsed_s:.1f}s ({summary.partitions / max(summary.elapsed_s, 1e-9):,.0f}/s; "
        f"files={summary.files}: {summary.files_written} written, {summary.links_made} hard links)"
    )
