"""``walduck services start|stop|status``: the local PostgreSQL + Kafka under the data dir."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from stack.services.errors import ServiceError
from walduck.config import load_settings

app = typer.Typer(no_args_is_help=True)
console = Console()

DATA_DIR = typer.Option(
    None, "--data-dir", help="Where the services live [WALDUCK_DATA_DIR, default .walduck]."
)


def _manager(data_dir: Path | None, kafka_protocol: str | None = None):  # type: ignore[no-untyped-def]
    from stack.services.manager import ServiceManager

    return ServiceManager(load_settings(data_dir=data_dir), kafka_protocol=kafka_protocol)


def _table(status: dict[str, dict[str, Any]]) -> Table:
    table = Table("service", "state", "pid", "address / data / log", show_lines=True)
    for name, info in status.items():
        if info.get("external"):
            table.add_row(name, "[cyan]external[/]", "-", info.get("dsn") or info.get("bootstrap") or "")
            continue
        state = "[green]running[/]" if info["running"] else "[red]stopped[/]"
        address = info.get("dsn") or info.get("bootstrap") or "-"
        table.add_row(
            name, state, str(info.get("pid") or "-"), f"{address}\n{info['data_dir']}\n{info['log']}"
        )
    return table


@app.command()
def start(
    data_dir: Path = DATA_DIR,
    kafka_protocol: str = typer.Option(
        None,
        "--kafka-protocol",
        help="Local Kafka client listener: PLAINTEXT, SASL_PLAINTEXT (SCRAM-SHA-512), SSL or SASL_SSL "
        "(throwaway CA); default: as it last ran, else PLAINTEXT.",
    ),
) -> None:
    """Start (or reuse) the local PostgreSQL and Kafka; prints their addresses."""
    manager = _manager(data_dir, kafka_protocol)
    began = time.monotonic()
    try:
        with console.status("starting PostgreSQL and Kafka…"):
            endpoints = manager.start()
    except ServiceError as exc:
        console.print(f"[bold red]could not start the services[/]\n{exc}")
        raise typer.Exit(1) from None
    console.print(_table(manager.status()))
    console.print(f"ready in {time.monotonic() - began:.1f}s")
    console.print(f"export WALDUCK_PG_DSN='{endpoints.pg_dsn}'", soft_wrap=True, highlight=False)
    console.print(
        f"export WALDUCK_KAFKA_BOOTSTRAP='{endpoints.kafka_bootstrap}'", soft_wrap=True, highlight=False
    )
    if endpoints.kafka_security:
        from walduck.config import WalduckSettings
        from walduck.kafka_security import security_env

        for name, value in security_env(WalduckSettings(**endpoints.kafka_security)).items():
            console.print(f"export {name}='{value}'", soft_wrap=True, highlight=False)


@app.command()
def stop(data_dir: Path = DATA_DIR) -> None:
    """Stop the local PostgreSQL and Kafka (external services are left alone)."""
    manager = _manager(data_dir)
    try:
        stopped = manager.stop()
    except ServiceError as exc:
        console.print(f"[bold red]could not stop the services[/]\n{exc}")
        raise typer.Exit(1) from None
    for name, was_running in stopped.items():
        console.print(f"{name}: {'stopped' if was_running else 'was not running'}")


@app.command()
def status(
    data_dir: Path = DATA_DIR,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show whether the services run, where, and their pids. Exit code 1 when a local one is not running."""
    info = _manager(data_dir).status()
    if as_json:
        print(json.dumps(info, indent=2, default=str))
    else:
        console.print(_table(info))
    if any(not v.get("external") and not v.get("running") for v in info.values()):
        raise typer.Exit(1)
