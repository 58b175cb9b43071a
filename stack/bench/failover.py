"""``walduck bench failover``: how long reads stay dark after a component dies (issue 21).

The whole pipeline runs as child processes (``stack.local.Stack``: connector, compactor as a static group
member, query service) under a steady workload: ``writers`` threads, each a catalog connection committing every
transaction shape of ``stack.workload`` at ``rate / writers`` commits/s, with real Parquet files.

Then each component in turn (connector -> compactor -> query service, ``kills`` rounds) is killed with SIGKILL
and started again after ``restart_delay_s`` (a supervisor's restart). From the kill on, a probe asks
``/sql/read`` with ``min_lsn`` = PostgreSQL's ``pg_current_wal_lsn()`` at each attempt (a writer doing
read-your-writes; connection errors and 503 are retried every 50 ms): the **recovery time** is kill -> the first
200 answer. The next kill waits ``settle_s`` after that answer. The same probe without a kill gives the steady
read-your-writes latency (the baseline). A second probe reads without ``min_lsn`` every 0.2 s throughout: those
reads must keep answering while the connector or the compactor is down.

After the run: caught up to PostgreSQL's current LSN, ``walduck verify`` must exit 0 and a recount of every
dataset (``count(*)``, ``sum(value)`` through ``/sql/read`` against the visible partitions' Parquet files read
directly) must match: zero drift.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import psycopg
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stack.bench.env import BenchServices, scenario_env
from stack.bench.pipeline import SCOPES, make_stack
from stack.bench.report import Result, percentile
from stack.local import COMPONENTS, Stack
from stack.procs import component_env
from stack.workload.generator import ALL_SHAPES_MIX, Workload
from walduck.catalog_reader import storage_targets, visible_partitions
from walduck.locations import partition_location
from walduck.lsn import format_lsn

FAILOVER_MIX = ALL_SHAPES_MIX
GOAL_P99_S = 5.0
GOAL_MAX_S = 10.0


@dataclass
class SteadyWorkload:
    """``writers`` threads, each one ``Workload`` (own connection, own datasets) in 2 s chunks until stopped."""

    stack: Stack
    writers: int
    rate: float
    datasets_per_writer: int = 2
    stop: threading.Event = field(default_factory=threading.Event)
    commits: int = 0
    errors: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SteadyWorkload:
        for i in range(self.writers):
            thread = threading.Thread(target=self._run, args=(i,), name=f"failover-writer-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, index: int) -> None:
        s = self.stack.settings
        try:
            with Workload(s.pg_dsn, s.catalog_schema, s.storage_root, seed=9100 + index) as wl:
                while not self.stop.is_set():
                    part = wl.run(
                        datasets=self.datasets_per_writer,
                        days=3,
                        partitions_per_shard=4,
                        rate=self.rate / self.writers,
                        duration=2.0,
                        mix=FAILOVER_MIX,
                    )
                    with self._lock:
                        self.commits += part.commits
        except Exception as exc:  # reported, and the run then fails its drift check honestly
            self.errors.append(f"writer {index}: {type(exc).__name__}: {exc}")

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def first_ryw_answer(stack: Stack, http: httpx.Client, since: float, limit_s: float) -> float | None:
    """Seconds from ``since`` to the first 200 answer of ``/sql/read`` with ``min_lsn`` = the LSN current at
    the attempt; None when none came within ``limit_s``."""
    dsn = stack.settings.pg_dsn
    while time.monotonic() - since < limit_s:
        lsn = current_lsn(dsn)
        left = max(0.5, limit_s - (time.monotonic() - since))
        try:
            resp = http.post(
                "/sql/read", json={"sql": "SELECT 1 AS ok", "min_lsn": format_lsn(lsn)}, timeout=left
            )
            if resp.status_code == 200:
                return time.monotonic() - since
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return None


@dataclass
class StaleReadProbe:
    """``/sql/read`` without ``min_lsn`` every ``interval_s``: (monotonic time, status, staleness header)."""

    base_url: str
    interval_s: float = 0.2
    samples: list[tuple[float, int, float | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> StaleReadProbe:
        self._thread = threading.Thread(target=self._run, name="failover-stale-probe", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, headers={"x-iam-scopes": SCOPES}, timeout=5) as http:
            while not self.stop.is_set():
                at = time.monotonic()
                try:
                    resp = http.post("/sql/read", json={"sql": "SELECT 1 AS ok"})
                    header = resp.headers.get("x-walduck-staleness-seconds")
                    self.samples.append((at, resp.status_code, float(header) if header else None))
                except httpx.HTTPError:
                    self.samples.append((at, 0, None))
                self.stop.wait(self.interval_s)

    def join(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(10)


def parquet_recount(stack: Stack) -> tuple[int, int, list[str]]:
    """(datasets, rows checked, mismatches): count(*)/sum(value) through /sql/read vs the visible partitions'
    Parquet files read straight from storage."""
    s = stack.settings
    with psycopg.connect(s.pg_dsn) as conn:
        visible = visible_partitions(conn, s.catalog_schema)
        targets = storage_targets(conn, s.catalog_schema)
        slugs = dict(conn.execute(f'SELECT id, slug FROM "{s.catalog_schema}".datasets').fetchall())
    from sinks.context.naming import sanitize_view_name

    truth: dict[str, list[float]] = {did: [0, 0.0] for did in slugs}
    for (did, _shard), parts in visible.items():
        for row in parts.values():
            path = partition_location(targets[row["storage_target_id"]], row["file_path"], s.storage_root)
            table = pq.read_table(path, columns=["value"])
            truth[did][0] += table.num_rows
            truth[did][1] += float(pc.sum(table["value"]).as_py() or 0.0)
    mismatches: list[str] = []
    rows = 0
    for did, (n, total) in truth.items():
        view = sanitize_view_name(slugs[did])
        resp = stack.read(
            f'SELECT count(*) AS n, coalesce(sum(value), 0) AS s FROM timestore."{view}"', scopes=SCOPES
        )
        if resp.status_code != 200:
            mismatches.append(f"{slugs[did]}: {resp.status_code} {resp.text[:200]}")
            continue
        got = resp.json()["rows"][0]
        if got["n"] != n or abs(float(got["s"]) - total) > 1e-6 * max(1.0, abs(total)):
            mismatches.append(f"{slugs[did]}: SQL {got['n']} rows / {got['s']}, files {n} / {total}")
        rows += int(n)
    return len(truth), rows, mismatches


def run_verify(stack: Stack) -> subprocess.CompletedProcess[str]:
    env = component_env(stack.settings, **stack.extra_env)
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", "verify", "--url", stack.base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_failover(
    services: BenchServices,
    kills: int,
    writers: int = 3,
    rate: float = 15.0,
    settle_s: float = 2.0,
    restart_delay_s: float = 0.2,
    limit_s: float = 60.0,
) -> Result:
    result = Result(
        "failover",
        {
            "kills_per_component": kills,
            "writers": writers,
            "rate": rate,
            "settle_s": settle_s,
            "restart_delay_s": restart_delay_s,
            "limit_s": limit_s,
            "mix": FAILOVER_MIX,
            "compactor_membership": "static (WALDUCK_COMPACTOR_GROUP_INSTANCE_ID=compactor-0)",
        },
    )
    with scenario_env(services, "failover", topics=True) as env:
        stack = make_stack(env)
        http = httpx.Client(base_url=stack.base_url, headers={"x-iam-scopes": SCOPES}, timeout=30)
        load: SteadyWorkload | None = None
        stale: StaleReadProbe | None = None
        try:
            stack.start()
            stack.wait_ready(180)
            stack.wait_caught_up(None, 120)
            load = SteadyWorkload(stack, writers, rate).start()
            time.sleep(3.0)
            baseline: list[float] = []
            for _ in range(20):
                took = first_ryw_answer(stack, http, time.monotonic(), limit_s)
                if took is not None:
                    baseline.append(took)
                time.sleep(0.1)
            stale = StaleReadProbe(stack.base_url).start()
            events: list[
                tuple[str, float, float, float | None]
            ] = []  # (component, kill at, restart at, took)
            run_started = time.monotonic()
            for _ in range(kills):
                for name in COMPONENTS:
                    time.sleep(settle_s)
                    comp = stack.components[name]
                    if not comp.alive:
                        raise RuntimeError(f"{name} died by itself:\n{comp.tail()}")
                    killed = time.monotonic()
                    comp.kill()
                    time.sleep(restart_delay_s)
                    comp.start()
                    comp.restarts += 1
                    took = first_ryw_answer(stack, http, killed, limit_s)
                    events.append((name, killed, time.monotonic() if took is None else killed + took, took))
            kills_s = time.monotonic() - run_started
            stale.join()
            load.join()
            stack.wait_caught_up(None, 300)
            verify = run_verify(stack)
            datasets, rows, mismatches = parquet_recount(stack)
            logs = {
                name: comp.log_path.read_text(errors="replace") for name, comp in stack.components.items()
            }
        finally:
            if stale is not None:
                stale.join()
            if load is not None:
                load.join()
            http.close()
            stack.stop()

    steady50, steady99 = percentile(baseline, 50), percentile(baseline, 99)
    result.add("workload commits during the run", load.commits, "", goal="> 0", ok=load.commits > 0)
    for name in COMPONENTS:
        took = [t for n, _k, _r, t in events if n == name and t is not None]
        missed = sum(1 for n, _k, _r, t in events if n == name and t is None)
        p99, worst = percentile(took, 99), max(took) if took else float("nan")
        result.add(
            f"{name} kills (not recovered within {limit_s:g} s)", f"{len(took) + missed} ({missed})", ""
        )
        result.add(f"{name} kill -> read-your-writes p50", percentile(took, 50), "s", baseline=steady50)
        result.add(
            f"{name} kill -> read-your-writes p99",
            p99,
            "s",
            baseline=steady99,
            goal=f"<= {GOAL_P99_S:g} s",
            ok=missed == 0 and p99 <= GOAL_P99_S,
        )
        result.add(
            f"{name} kill -> read-your-writes max",
            worst,
            "s",
            goal=f"<= {GOAL_MAX_S:g} s",
            ok=missed == 0 and worst <= GOAL_MAX_S,
        )
        result.series[f"{name}_recovery_s"] = [
            None if t is None else round(t, 3) for n, _k, _r, t in events if n == name
        ]
    # reads without min_lsn while a peer of the query service was down (kill -> its recovery)
    outages = [(k, r) for n, k, r, _t in events if n in ("connector", "compactor")]
    during = [s for s in stale.samples if any(k <= s[0] <= r for k, r in outages)]
    answered = sum(1 for s in during if s[1] == 200)
    result.add(
        "reads without min_lsn answered 200 during connector/compactor outages",
        f"{answered}/{len(during)}",
        "",
        goal="all",
        ok=answered == len(during),
    )
    staleness = [s[2] for s in during if s[2] is not None]
    if staleness:
        result.add("their staleness header max", max(staleness), "s")
    restores = [
        float(x) for x in re.findall(r"restore pass: \d+ partitions in ([\d.]+) s", logs["compactor"])
    ]
    if restores:
        result.add(
            "compactor restore pass p50 / max", f"{percentile(restores, 50):.2f} / {max(restores):.2f}", "s"
        )
    result.add(
        "connector slot waits (another walsender held the slot)",
        logs["connector"].count("waiting for slot"),
        "",
    )
    result.add("walduck verify exit code", verify.returncode, "", goal="0", ok=verify.returncode == 0)
    result.add(
        "Parquet recount mismatches",
        len(mismatches),
        f"of {datasets} datasets, {rows} rows",
        goal="0",
        ok=not mismatches,
    )
    result.series["steady_ryw_s"] = [round(t, 3) for t in baseline]
    result.series["events"] = [
        {"component": n, "at_s": round(k - run_started, 2), "recovered_s": None if t is None else round(t, 3)}
        for n, k, _r, t in events
    ]
    result.params["kill_phase_s"] = round(kills_s, 1)
    result.notes.append(
        f"steady read-your-writes (no kill) p50 {steady50:.2f} s, p99 {steady99:.2f} s over {len(baseline)} probes"
    )
    if load.errors:
        result.notes.append(f"workload errors: {load.errors[:3]}")
    if mismatches:
        result.notes.append(f"drift: {mismatches[:5]}")
    if verify.returncode != 0:
        result.notes.append(f"verify: {verify.stdout[-800:]} {verify.stderr[-400:]}")
    return result
