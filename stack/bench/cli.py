"""``walduck bench <scenario>``: each benchmark against its same-run baseline (docs/performance.md).

Sizes are flags, defaults are the full sizes; ``--quick`` shrinks every scenario to under a minute.
Services: ``WALDUCK_PG_DSN`` / ``WALDUCK_KAFKA_BOOTSTRAP`` if set, else the local ones (started if needed).
Every scenario prints a table, writes ``bench-results/<scenario>.json`` (and PNGs where useful).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import typer

from stack.bench.report import RESULTS_DIR, Result, console

app = typer.Typer(no_args_is_help=True)

DataDir = typer.Option(None, "--data-dir", help="Local services and scratch space [WALDUCK_DATA_DIR].")
Quick = typer.Option(False, "--quick", help="Small sizes: each scenario in under a minute.")
OutDir = typer.Option(RESULTS_DIR, "--out", help="Where <scenario>.json and PNGs go.")


def _run(name: str, data_dir: Path | None, out: Path, body: Callable[..., Result]) -> Result:
    from stack.bench.env import BenchServices

    logging.basicConfig(level=logging.WARNING)
    services = BenchServices.start(data_dir)
    try:
        started = time.monotonic()
        result = body(services)
        result.params["elapsed_s"] = round(time.monotonic() - started, 2)
        result.write(out)
        result.print()
        return result
    finally:
        services.stop()


def _pick(quick: bool, value: int | float | None, full: int | float, small: int | float) -> int | float:
    if value is not None:
        return value
    return small if quick else full


# ------------------------------------------------------------------ scenarios
def apply_body(
    quick: bool, partitions: int | None = None, datasets: int | None = None
) -> Callable[..., Result]:
    from stack.bench.apply import run_apply

    return lambda services: run_apply(
        services,
        partitions=int(_pick(quick, partitions, 1_000_000, 50_000)),
        datasets=int(_pick(quick, datasets, 300, 30)),
        repeats=30 if quick else 100,
        rebuilds=1 if quick else 3,
    )


@app.command("apply")
def apply_cmd(
    partitions: int = typer.Option(None, help="Partitions in the context [1,000,000; quick 50,000]."),
    datasets: int = typer.Option(None, help="Datasets they spread over [300; quick 30]."),
    quick: bool = Quick,
    data_dir: Path = DataDir,
    out: Path = OutDir,
) -> None:
    """Delta apply (1 / 100 / 1,000 changes) vs a full rebuild from PostgreSQL."""
    _run("apply", data_dir, out, apply_body(quick, partitions, datasets))


def query_body(quick: bool, partitions: int | None = None) -> Callable[..., Result]:
    from stack.bench.query import run_query

    return lambda services: run_query(
        services, partitions=int(_pick(quick, partitions, 10_000, 2_000)), repeats=5 if quick else 15
    )


@app.command("query")
def query_cmd(
    partitions: int = typer.Option(None, help="Partitions of the dataset [10,000; quick 2,000]."),
    quick: bool = Quick,
    data_dir: Path = DataDir,
    out: Path = OutDir,
) -> None:
    """1% time-range query and full aggregate vs a plain DuckDB view over all the dataset's files."""
    _run("query", data_dir, out, query_body(quick, partitions))


def planner_body(
    quick: bool, partitions: int | None = None, requests: int | None = None
) -> Callable[..., Result]:
    from stack.bench.planner import run_planner

    return lambda services: run_planner(
        services,
        partitions=int(_pick(quick, partitions, 10_000, 10_000)),
        requests=int(_pick(quick, requests, 1_000, 200)),
        delta_rate=20.0,
        delta_changes=10,
    )


@app.command("planner")
def planner_cmd(
    partitions: int = typer.Option(None, help="Partitions of the dataset [10,000]."),
    requests: int = typer.Option(None, help="Requests per phase [1,000; quick 200]."),
    quick: bool = Quick,
    data_dir: Path = DataDir,
    out: Path = OutDir,
) -> None:
    """Request -> DuckDB executing while deltas arrive, vs the idle context."""
    _run("planner", data_dir, out, planner_body(quick, partitions, requests))


def connector_body(
    quick: bool, partitions: int | None = None, debezium: bool = True
) -> Callable[..., Result]:
    from stack.bench.connector import run_connector

    return lambda services: run_connector(
        services,
        partitions=int(_pick(quick, partitions, 500_000, 20_000)),
        datasets=50 if not quick else 10,
        timeout=180 if quick else 1800,
        debezium=debezium,
        latency_s=5.0 if quick else 15.0,
    )


@app.command("connector")
def connector_cmd(
    partitions: int = typer.Option(None, help="Partitions the workload inserts [500,000; quick 20,000]."),
    debezium: bool = typer.Option(True, help="Also run the Debezium PostgreSQL connector on the same WAL."),
    quick: bool = Quick,
    data_dir: Path = DataDir,
    out: Path = OutDir,
) -> None:
    """Connector records/s (pgoutput -> Kafka acked) vs pg_recvlogical and Debezium on the same WAL."""
    _run("connector", data_dir, out, connector_body(quick, partitions, debezium))


def service_body(
    quick: bool, partitions: int | None = None, clients: int | None = None
) -> Callable[..., dict]:
    from stack.bench.service import run_service

    return lambda services: run_service(
        services,
        partitions=int(_pick(quick, partitions, 1_000_000, 20_000)),
        datasets=300 if not quick else 20,
        clients=int(_pick(quick, clients, 50, 50)),
        load_s=10.0 if quick else 60.0,
        ingest_rate=5.0 if quick else 20.0,
        timeout=120 if quick else 900,
    )


def _run_service(
    name: str, quick: bool, partitions: int | None, clients: int | None, data_dir: Path | None, out: Path
) -> None:
    results: dict[str, Result] = {}

    def body(services: object) -> Result:
        results.update(service_body(quick, partitions, clients)(services))
        for other, res in results.items():
            if other != name:
                res.write(out)
                res.print()
        return results[name]

    _run(name, data_dir, out, body)


for _name, _doc in (
    (
        "bootstrap",
        "Empty -> queryable context through the pipeline vs a full-scan build (also writes memory, hit-ratio).",
    ),
    ("memory", "Query service RSS idle and under clients (also writes bootstrap, hit-ratio)."),
    (
        "hit-ratio",
        "Requests served without waiting for a rebuild, under clients + ingestion (also writes bootstrap, memory).",
    ),
):

    def _cmd(
        partitions: int = typer.Option(None, help="Partitions in the catalog [1,000,000; quick 20,000]."),
        clients: int = typer.Option(None, help="Concurrent clients [50]."),
        quick: bool = Quick,
        data_dir: Path = DataDir,
        out: Path = OutDir,
        _name: str = typer.Option(_name, hidden=True),
    ) -> None:
        _run_service(_name, quick, partitions, clients, data_dir, out)

    app.command(_name, help=_doc)(_cmd)


def jobs_body(
    quick: bool, partitions: int | None = None, spin: int | None = None, jobs: int | None = None
) -> Callable[..., Result]:
    from stack.bench.jobs import run_jobs

    return lambda services: run_jobs(
        services,
        partitions=int(_pick(quick, partitions, 10_000, 2_000)),
        spin=int(_pick(quick, spin, 60_000, 60_000)),
        repeats=10 if quick else 30,
        jobs=int(_pick(quick, jobs, 20, 20)),
        clients=4,
        read_s=4.0 if quick else 15.0,
    )


@app.command("jobs")
def jobs_cmd(
    partitions: int = typer.Option(None, help="Partitions of the dataset [10,000; quick 2,000]."),
    spin: int = typer.Option(
        None, help="Side of the tail's spin cross join, re-sized to a ≥ 5 s tail [60,000]."
    ),
    jobs: int = typer.Option(None, help="Concurrent jobs during the /sql/read phase [20]."),
    quick: bool = Quick,
    data_dir: Path = DataDir,
    out: Path = OutDir,
) -> None:
    """SQL jobs: head on a warm tail layer vs the tail's replay; /sql/read p99 with 20 concurrent jobs."""
    _run("jobs", data_dir, out, jobs_body(quick, partitions, spin, jobs))


def freshness_body(
    quick: bool,
    rate: float | None = None,
    duration: float | None = None,
    writers: int | None = None,
    datasets: int = 16,
    files: str = "linked",
    heartbeat_interval: float | None = None,
) -> Callable[..., Result]:
    from stack.bench.freshness import run_freshness

    return lambda services: run_freshness(
        services,
        rate=float(_pick(quick, rate, 1000.0, 50.0)),
        duration=float(_pick(quick, duration, 300.0, 30.0)),
        samples_per_s=20.0,
        writers=writers,
        datasets=datasets,
        files=files,
        heartbeat_interval=heartbeat_interval,
    )


@app.command("freshness")
def freshness_cmd(
    rate: float = typer.Option(None, help="Catalog commits/s offered [1,000; quick 50]."),
    duration: float = typer.Option(None, help="Seconds [300; quick 30]."),
    writers: int = typer.Option(None, help="Workload writer processes [one per 150 commits/s, 1..8]."),
    datasets: int = typer.Option(16, help="Datasets written to, spread over the writers."),
    files: str = typer.Option(
        "linked", help="linked (hard links to template Parquet files) | real (a new file per partition)."
    ),
    heartbeat_interval: float = typer.Option(
        None,
        help="Connector heartbeat seconds for this run [the connector's default, WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL].",
    ),
    quick: bool = Quick,
    data_dir: Path = DataDir,
    out: Path = OutDir,
) -> None:
    """Source commit -> visible through /sql/read at a sustained commit rate (p50/p99/max + plot)."""
    _run(
        "freshness",
        data_dir,
        out,
        freshness_body(quick, rate, duration, writers, datasets, files, heartbeat_interval),
    )


def failover_body(
    quick: bool,
    kills: int | None = None,
    writers: int | None = None,
    rate: float | None = None,
    settle: float | None = None,
    restart_delay: float = 0.2,
) -> Callable[..., Result]:
    from stack.bench.failover import run_failover

    return lambda services: run_failover(
        services,
        kills=int(_pick(quick, kills, 20, 1)),
        writers=int(_pick(quick, writers, 3, 2)),
        rate=float(_pick(quick, rate, 15.0, 6.0)),
        settle_s=float(_pick(quick, settle, 2.0, 1.0)),
        restart_delay_s=restart_delay,
    )


@app.command("failover")
def failover_cmd(
    kills: int = typer.Option(None, help="kill -9 rounds, each killing every component once [20; quick 1]."),
    writers: int = typer.Option(None, help="Workload writer threads [3; quick 2]."),
    rate: float = typer.Option(None, help="Catalog commits/s over all writers [15; quick 6]."),
    settle: float = typer.Option(None, help="Seconds between a recovery and the next kill [2; quick 1]."),
    restart_delay: float = typer.Option(0.2, help="Seconds between a kill and the restart (the supervisor)."),
    quick: bool = Quick,
    data_dir: Path = DataDir,
    out: Path = OutDir,
) -> None:
    """kill -9 each component under a steady workload: kill -> first read-your-writes answer, then zero drift."""
    _run("failover", data_dir, out, failover_body(quick, kills, writers, rate, settle, restart_delay))


def history_body(
    quick: bool, datasets: int | None = None, catalog: int | None = None, history: int | None = None
) -> Callable[..., Result]:
    from stack.bench.history import run_history

    return lambda services: run_history(
        services,
        datasets=int(_pick(quick, datasets, 2_000, 400)),
        catalog=int(_pick(quick, catalog, 100_000, 10_000)),
        history=int(_pick(quick, history, 100_000, 10_000)),
    )


@app.command("history")
def history_cmd(
    datasets: int = typer.Option(None, help="Datasets of the catalog [2,000; quick 400]."),
    catalog: int = typer.Option(None, help="Partitions in the catalog [100,000; quick 10,000]."),
    history: int = typer.Option(None, help="Partition updates of the 1x history [100,000; quick 10,000]."),
    quick: bool = Quick,
    data_dir: Path = DataDir,
    out: Path = OutDir,
) -> None:
    """Compactor restore time after 1x and 10x history over the same catalog (snapshot vs full replay)."""
    _run("history", data_dir, out, history_body(quick, datasets, catalog, history))


@app.command("compactor-memory")
def compactor_memory_cmd(
    datasets: int = typer.Option(None, help="Datasets of the catalog [300; quick 30]."),
    catalog: int = typer.Option(None, help="Visible partitions in the catalog [1,000,000; quick 50,000]."),
    changes_partitions: int = typer.Option(4, help="Changes partitions (one compactor state each)."),
    quick: bool = Quick,
    out: Path = OutDir,
) -> None:
    """Compactor RSS holding a catalog's visible partitions (in-process, no services; goal < 1 GiB at 1M)."""
    from stack.bench.compactor_memory import run_compactor_memory

    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    result = run_compactor_memory(
        datasets=int(_pick(quick, datasets, 300, 30)),
        catalog=int(_pick(quick, catalog, 1_000_000, 50_000)),
        changes_partitions=changes_partitions,
    )
    result.params["elapsed_s"] = round(time.monotonic() - started, 2)
    result.write(out)
    result.print()


SCENARIOS: dict[str, Callable[[bool], Callable[..., Result]]] = {
    "connector": lambda quick: connector_body(quick),
    "freshness": lambda quick: freshness_body(quick),
    "apply": lambda quick: apply_body(quick),
    "planner": lambda quick: planner_body(quick),
    "query": lambda quick: query_body(quick),
    "bootstrap+memory+hit-ratio": lambda quick: service_body(quick),
    "failover": lambda quick: failover_body(quick),
    # not `history`: its --quick run takes ~3 min and would push `bench all --quick` past its smoke-test bound
}


@app.command("all")
def all_cmd(quick: bool = Quick, data_dir: Path = DataDir, out: Path = OutDir) -> None:
    """Every scenario in turn; exits 1 only if one crashed (timings never fail the run)."""
    from stack.bench.env import BenchServices

    logging.basicConfig(level=logging.WARNING)
    services = BenchServices.start(data_dir)
    crashed: list[str] = []
    try:
        for name, make in SCENARIOS.items():
            console.rule(f"walduck bench {name}{' --quick' if quick else ''}")
            started = time.monotonic()
            try:
                produced = make(quick)(services)
            except Exception:
                crashed.append(name)
                console.print(f"[red]scenario {name} crashed:[/]\n{traceback.format_exc()}")
                continue
            results = produced.values() if isinstance(produced, dict) else [produced]
            for result in results:
                result.params["elapsed_s"] = round(time.monotonic() - started, 2)
                result.params["quick"] = quick
                result.write(out)
                result.print()
    finally:
        services.stop()
    if crashed:
        console.print(f"[red]crashed: {', '.join(crashed)}[/]")
        raise typer.Exit(1)
