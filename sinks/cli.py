"""CLI commands of this component (wired into ``stack.cli`` as ``walduck query …``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)


def _settings(data_dir: Path | None, pg_dsn: str | None, context_path: Path | None):  # type: ignore[no-untyped-def]
    from sinks.settings import SinkSettings
    from walduck.config import load_settings

    walduck = load_settings(data_dir=data_dir, pg_dsn=pg_dsn)
    sink = SinkSettings() if context_path is None else SinkSettings(context_path=context_path)
    return sink, walduck


@app.command()
def verify(
    url: str = typer.Option(
        None, help="A running query service (GET /admin/sql/runtime-cache?detail=partitions)."
    ),
    data_dir: Path = typer.Option(None, help="[WALDUCK_DATA_DIR]"),
    pg_dsn: str = typer.Option(None, "--pg-dsn", help="[WALDUCK_PG_DSN]"),
    context_path: Path = typer.Option(None, help="DuckDB context file to open read-only (no --url)."),
    attempts: int = typer.Option(3, help="With --url: a drift must persist over this many comparisons."),
    scopes: str = typer.Option(
        "timestore:admin",
        envvar="WALDUCK_VERIFY_SCOPES",
        help="With --url: x-iam-scopes sent to the admin route (must include the service's admin scope).",
    ),
    read_scopes: str = typer.Option(
        "timestore:admin,timestore:sql:read",
        envvar="WALDUCK_VERIFY_READ_SCOPES",
        help="With --url: x-iam-scopes of the bind check's /sql/read calls (admin + the SQL read scope).",
    ),
) -> None:
    """Compare every dataset's visible partitions in a context with PostgreSQL's.

    Exit codes: 0 in step, 1 drift, 2 the comparison could not be made (PostgreSQL or the service unreachable,
    refused, a context file that cannot be opened), with one line saying why."""
    import duckdb
    import httpx
    import psycopg

    from sinks.verify import unbound_relations
    from sinks.verify import verify as run_verify
    from walduck.errors import WalduckError

    sink, walduck = _settings(data_dir, pg_dsn, context_path)
    service = url or sink.service_url or None
    try:
        drifts = run_verify(walduck, sink, url=service, attempts=attempts, scopes=scopes)
        unbound = unbound_relations(service, scopes=scopes, read_scopes=read_scopes) if service else None
    except (psycopg.Error, httpx.HTTPError, duckdb.Error, OSError, WalduckError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"walduck verify: error: {type(exc).__name__}: {first}", file=sys.stderr)
        raise typer.Exit(2) from None
    if unbound is None:
        print("walduck verify: relations not bound (needs --url: a running query service)", file=sys.stderr)
    for u in unbound or []:
        print(u)
    if not drifts and not unbound:
        bound = "" if unbound is None else "; every dataset's relation binds"
        console.print(f"[green]in step[/green]: every dataset's visible partitions match PostgreSQL{bound}")
        return
    for d in drifts:
        print(d)
    if drifts:
        datasets = sorted({(d.dataset_id, d.manifest_shard) for d in drifts})
        console.print(f"[red]drift[/red]: {len(drifts)} partition(s) in {len(datasets)} dataset shard(s)")
    if unbound:
        console.print(f"[red]unbound[/red]: {len(unbound)} dataset relation(s) do not bind")
    raise typer.Exit(1)


@app.command("context-status")
def context_status(
    data_dir: Path = typer.Option(None, help="[WALDUCK_DATA_DIR]"),
    context_path: Path = typer.Option(None, help="DuckDB context file (the service must be stopped)."),
) -> None:
    """Print the runtime-cache snapshot of a context file (per-shard LSN, offsets, datasets)."""
    from sinks.context.store import ContextStore
    from sinks.service.admin_snapshot import admin_snapshot

    sink, walduck = _settings(data_dir, None, context_path)
    with ContextStore(sink, walduck) as store:
        print(json.dumps(admin_snapshot(store), indent=2, default=str))


@app.command()
def rebuild(
    dataset_id: str = typer.Option(None, help="One dataset (default: everything)."),
    data_dir: Path = typer.Option(None, help="[WALDUCK_DATA_DIR]"),
    pg_dsn: str = typer.Option(None, "--pg-dsn", help="[WALDUCK_PG_DSN]"),
    context_path: Path = typer.Option(None, help="DuckDB context file (the service must be stopped)."),
) -> None:
    """Reload a context file from PostgreSQL (stored offsets are kept)."""
    from sinks.context.store import ContextStore

    sink, walduck = _settings(data_dir, pg_dsn, context_path)
    with ContextStore(sink, walduck) as store:
        store.rebuild(dataset_id, reason="cli")
        console.print(
            f"rebuilt {dataset_id or 'all datasets'}; {len(store.datasets())} dataset(s) in context"
        )
