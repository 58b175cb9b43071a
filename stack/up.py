"""``walduck up``: the main job on an embedded default.

1. start (or reuse) the local PostgreSQL + Kafka, or use ``--pg-dsn/--kafka`` services;
2. apply the catalog migrations, ``connector setup`` and the least-privilege roles (``walduck catalog roles``)
   as the admin DSN, and create the topics; the components then run as those roles, never as the superuser;
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

from stack.procs import Component, component_env, wait_until
from walduck.config import WalduckSettings

console = Console()

# Timestore's scope names (Timestore's header IAM), configured on the query service `walduck up` runs: nothing is open
TIMESTORE_SCOPES_ENV = {
    "WALDUCK_QUERY_REQUIRE_SCOPE": "timestore:read",
    "WALDUCK_QUERY_ADMIN_SCOPE": "timestore:admin",
    "WALDUCK_QUERY_SQL_READ_SCOPE": "timestore:sql:read",
    "WALDUCK_QUERY_SQL_EXEC_SCOPE": "timestore:sql:exec",
    "WALDUCK_QUERY_METRICS_SCOPE": "timestore:metrics",
}
# the demo workload creates datasets readable with timestore:read and later moves them to team scopes
# (stack.workload.generator: Workload.change_metadata, teams 1-5): a caller sees a dataset only with its scope
DEMO_READ_SCOPES = [
    "timestore:sql:read",
    "timestore:read",
    *(f"timestore:read:team-{n}" for n in range(1, 6)),
]
ADMIN_HEADERS = {"x-iam-scopes": "timestore:admin"}


def examples(
    base_url: str, connector_metrics_port: int, compactor_metrics_port: int
) -> list[tuple[str, str]]:
    """``(label, shell command)`` printed by ``walduck up``, each carrying the scopes that make it work (pinned by
    tests/integration/e2e/test_up.py, which runs them as printed)."""
    read = ",".join(DEMO_READ_SCOPES)
    sql = '{"sql":"select dataset_slug, partition_count, total_rows from timestore_runtime.datasets"}'
    return [
        (
            "SQL",
            f"curl -sf -XPOST {base_url}/sql/read -H 'content-type: application/json' "
            f"-H 'x-iam-scopes: {read}' -d '{sql}'",
        ),
        ("schema", f"curl -sf {base_url}/sql/schema -H 'x-iam-scopes: {read}'"),
        (
            "exec",
            f"curl -sf -XPOST {base_url}/sql/exec -H 'content-type: application/json' "
            "-H 'x-iam-scopes: timestore:sql:exec' -d '{\"sql\":\"select count(*) as n from dataset_partitions\"}'",
        ),
        ("admin", f"curl -sf {base_url}/admin/sql/runtime-cache -H 'x-iam-scopes: timestore:admin'"),
        ("metrics", f"curl -sf {base_url}/metrics -H 'x-iam-scopes: timestore:metrics'"),
        ("connector", f"curl -sf 127.0.0.1:{connector_metrics_port}/metrics"),
        ("compactor", f"curl -sf 127.0.0.1:{compactor_metrics_port}/metrics"),
    ]


def _status_table(base_url: str, components: list[Component], workload_state: dict[str, object]) -> Table:
    table = Table(title="walduck", expand=False)
    table.add_column("what")
    table.add_column("state")
    for comp in components:
        table.add_row(comp.name, "[green]running[/]" if comp.alive else "[red]stopped[/]")
    try:
        snap = httpx.get(f"{base_url}/admin/sql/runtime-cache", headers=ADMIN_HEADERS, timeout=2).json()[
            "snapshot"
        ]
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
    from stack.catalog.roles import provision
    from stack.services.manager import ServiceManager
    from stack.services.topics import ensure_topics

    data_dir = Path(settings.data_dir).resolve()
    settings.data_dir = data_dir
    settings.storage_root = Path(settings.storage_root).resolve()
    manager = ServiceManager(settings, kafka_protocol=kafka_protocol)
    with console.status("starting PostgreSQL and Kafka…"):
        endpoints = manager.start()
    endpoints.apply(settings)  # DSN, bootstrap and the local Kafka's security settings
    console.print(f"[bold]PostgreSQL[/] {endpoints.pg_dsn}\n[bold]Kafka[/]      {endpoints.kafka_bootstrap}")
    # what the services manager started (or was given) is the admin DSN: setup and the demo workload only
    settings.pg_admin_dsn = settings.pg_admin_dsn or endpoints.pg_dsn
    with console.status("catalog migrations, roles and topics…"):
        applied = provision(settings)
        asyncio.run(ensure_topics(settings.kafka_bootstrap, settings))
    console.print(f"catalog schema [bold]{settings.catalog_schema}[/]: {len(applied)} migrations applied")
    console.print(
        "roles: connector [bold]walduck_connector[/], query service [bold]walduck_reader[/] + "
        "[bold]walduck_exec[/] (no superuser; docs/security.md)"
    )

    env = component_env(settings, **TIMESTORE_SCOPES_ENV)
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
            "\n[bold green]walduck is up[/] (scopes: Timestore's names; without them every route is 403)"
        )
        for label, command in examples(base_url, connector_metrics_port, compactor_metrics_port):
            # one line each, exactly as a shell runs it (no wrapping, no markup)
            console.print(f"  {label:<10}{command}", soft_wrap=True, markup=False, highlight=False)
        console.print(f"  API docs  {base_url}/docs\n  logs      {logs}/\n  Ctrl-C stops everything.\n")
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
    from stack.workload.generator import Workload

    workload = Workload(settings.admin_dsn(), settings.catalog_schema, settings.storage_root, seed=42)
    try:
        state["commits"] = 0
        while not stop.is_set():
            summary = workload.run(datasets=datasets, days=3, partitions_per_shard=4, rate=rate, duration=5.0)
            state["commits"] = int(state["commits"]) + int(getattr(summary, "commits", 0) or 0)  # type: ignore[call-overload]
    finally:
        close = getattr(workload, "close", None)
        if close is not None:
            close()
