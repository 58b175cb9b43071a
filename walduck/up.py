"""``walduck up``: the main job on an embedded default.

1. start (or reuse) the local PostgreSQL + Kafka, or use ``--pg-dsn/--kafka`` services;
2. apply the catalog migrations and create the topics;
3. start the connector, the compactor and the query service as child processes;
4. drive a demo workload against the catalog (real Parquet files);
5. show where to look and a live status line until Ctrl-C, which stops everything it started.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from walduck.config import WalduckSettings
from walduck.procs import Component, component_env, wait_until

console = Console()


def _status_table(base_url: str, components: list[Component], workload_state: dict[str, object]) -> Table:
    table = Table(title="walduck", expand=False)
    table.add_column("what")
    table.add_column("state")
    for comp in components:
        table.add_row(comp.name, "[green]running[/]" if comp.alive else "[red]stopped[/]")
    try:
        snap = httpx.get(f"{base_url}/admin/sql/runtime-cache", timeout=2).json()["snapshot"]
        table.add_row("datasets in context", str(snap.get("datasetCount")))
        table.add_row("applied LSN", str(snap.get("appliedLsn")))
        table.add_row("staleness (s)", f"{snap.get('stalenessSeconds')}")
    except (httpx.HTTPError, KeyError, ValueError):
        table.add_row("query service", "[yellow]starting…[/]")
    table.add_row("workload commits", str(workload_state.get("commits", 0)))
    return table


def run_up(
    settings: WalduckSettings,
    *,
    http_port: int,
    connector_metrics_port: int,
    compactor_metrics_port: int,
    rate: float,
    datasets: int,
    duration: float | None,
    keep_services: bool,
    kafka_protocol: str | None = None,
) -> None:
    from walduck.catalog.migrate import apply_migrations
    from walduck.services.manager import ServiceManager
    from walduck.services.topics import ensure_topics

    data_dir = Path(settings.data_dir).resolve()
    settings.data_dir = data_dir
    settings.storage_root = Path(settings.storage_root).resolve()
    manager = ServiceManager(settings, kafka_protocol=kafka_protocol)
    with console.status("starting PostgreSQL and Kafka…"):
        endpoints = manager.start()
    endpoints.apply(settings)  # DSN, bootstrap and the local Kafka's security settings
    console.print(f"[bold]PostgreSQL[/] {endpoints.pg_dsn}\n[bold]Kafka[/]      {endpoints.kafka_bootstrap}")
    with console.status("catalog migrations and topics…"):
        applied = apply_migrations(settings.pg_dsn, settings.catalog_schema)
        asyncio.run(ensure_topics(settings.kafka_bootstrap, settings))
    console.print(f"catalog schema [bold]{settings.catalog_schema}[/]: {len(applied)} migrations applied")

    env = component_env(settings)
    logs = data_dir / "logs"
    components = [
        Component(
            "connector",
            ["connector", "run", "--metrics-port", str(connector_metrics_port)],
            env,
            logs / "connector.log",
        ),
        Component(
            "compactor",
            ["compactor", "run", "--metrics-port", str(compactor_metrics_port)],
            env,
            logs / "compactor.log",
        ),
        Component("query", ["query", "serve", "--port", str(http_port)], env, logs / "query.log"),
    ]
    base_url = f"http://127.0.0.1:{http_port}"
    stop = threading.Event()
    workload_state: dict[str, object] = {"commits": 0}

    def _on_signal(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        for comp in components:
            comp.start()
        wait_until(lambda: _ready(base_url) or stop.is_set(), timeout=180, what="query service /ready")
        console.print(
            f"\n[bold green]walduck is up[/]\n"
            f"  SQL       curl -s -XPOST {base_url}/sql/read -H 'content-type: application/json' "
            "-H 'x-iam-scopes: timestore:read' "
            '-d \'{"sql":"select dataset_slug, partition_count, total_rows from timestore_runtime.datasets"}\'\n'
            f"  schema    {base_url}/sql/schema      API docs {base_url}/docs\n"
            f"  metrics   {base_url}/metrics  127.0.0.1:{connector_metrics_port}/metrics  "
            f"127.0.0.1:{compactor_metrics_port}/metrics\n"
            f"  logs      {logs}/\n  Ctrl-C stops everything.\n"
        )
        worker = threading.Thread(
            target=_demo_workload, args=(settings, rate, datasets, stop, workload_state), daemon=True
        )
        worker.start()
        started = time.monotonic()
        with Live(
            _status_table(base_url, components, workload_state), console=console, refresh_per_second=1
        ) as live:
            while not stop.is_set():
                if duration is not None and time.monotonic() - started > duration:
                    break
                for comp in components:
                    if not comp.alive:
                        console.print(f"[red]{comp.name} exited[/]; last log lines:\n{comp.tail()}")
                        comp.restart()
                live.update(_status_table(base_url, components, workload_state))
                stop.wait(1.0)
        stop.set()
        worker.join(timeout=10)
    finally:
        console.print("stopping walduck components…")
        for comp in reversed(components):
            comp.stop()
        if not keep_services:
            manager.stop()
            console.print("services stopped")


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _demo_workload(
    settings: WalduckSettings, rate: float, datasets: int, stop: threading.Event, state: dict[str, object]
) -> None:
    from walduck.workload.generator import Workload

    workload = Workload(settings.pg_dsn, settings.catalog_schema, settings.storage_root, seed=42)
    try:
        state["commits"] = 0
        while not stop.is_set():
            summary = workload.run(datasets=datasets, days=3, partitions_per_shard=4, rate=rate, duration=5.0)
            state["commits"] = int(state["commits"]) + int(getattr(summary, "commits", 0) or 0)  # type: ignore[call-overload]
    finally:
        close = getattr(workload, "close", None)
        if close is not None:
            close()
