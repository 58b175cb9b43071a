"""``walduck bench freshness``: source commit -> visible through ``/sql/read``, at a sustained commit rate.

The workload (:func:`~stack.workload.writers.run_writers`: ``writers`` processes, one catalog connection
each, ``files='linked'`` so a commit costs its catalog transaction, not a Parquet write) offers ``rate``
catalog commits/s in Timestore's transaction shapes. For a sample of commits (at most ``samples_per_s`` a
second) a client asks ``/sql/read`` with ``min_lsn`` = that commit's ``pg_current_wal_lsn()`` (what a writer
doing read-your-writes sends): the service answers once every context shard applied it, so answer time -
commit time = commit -> visible (plus one local HTTP round trip, measured separately as the idle
``SELECT 1`` time). The achieved commit rate is reported next to the offered one: a box that cannot drive the
rate says so instead of measuring freshness at a lower load silently.

Where the time goes is read from the components' own histograms over the run (bucket estimates):
connector produce latency, compactor window (first record -> deltas acknowledged), commit -> applied in a
context (``walduck_end_to_end_latency_seconds``, the shard that holds the change), and the gap between that
and the probe's figure is the wait for the *other* shards to pass the LSN (heartbeats on idle shards).
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from stack.bench.env import BenchServices, scenario_env
from stack.bench.pipeline import SCOPES, component_pid, make_stack, parse_prometheus, scrape
from stack.bench.report import Result, percentile
from stack.workload.writers import run_writers
from walduck.lsn import format_lsn
from walduck.records import partition_of

# an ingestion-heavy mix (Timestore's catalog traffic is mostly ingestion; lifecycle jobs run far less often)
FRESHNESS_MIX: dict[str, float] = {
    "ingest": 0.85,
    "new_manifest_version": 0.03,
    "retention": 0.05,
    "compaction": 0.03,
    "schema_change": 0.01,
    "metadata_change": 0.03,
}


def default_writers(rate: float) -> int:
    """One writer connection per ~150 commits/s offered (what one reaches on a quiet 2-core box), 1..8."""
    return max(1, min(8, math.ceil(rate / 150)))


def histogram_quantile(metrics: dict[str, float], before: dict[str, float], name: str, q: float) -> float:
    """Quantile ``q`` (0..1) of histogram ``name`` over the interval between two scrapes (linear within the
    bucket, Prometheus-style); NaN without observations."""
    prefix = f"{name}_bucket{{"
    buckets: list[tuple[float, float]] = []
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        le = key[key.index('le="') + 4 :].split('"', 1)[0]
        bound = math.inf if le == "+Inf" else float(le)
        buckets.append((bound, value - before.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    total = buckets[-1][1]
    rank = q * total
    lower, prev = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - prev
            return lower + (bound - lower) * ((rank - prev) / inside if inside else 1.0)
        lower, prev = bound, count
    return lower


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape_or_empty(url: str) -> dict[str, float]:
    try:
        return scrape(url)
    except Exception:
        return {}


def run_freshness(
    services: BenchServices,
    rate: float,
    duration: float,
    samples_per_s: float,
    writers: int | None = None,
    datasets: int = 16,
    files: str = "linked",
    heartbeat_interval: float | None = None,
) -> Result:
    writers = writers or default_writers(rate)
    result = Result(
        "freshness",
        {
            "rate": rate,
            "duration_s": duration,
            "samples_per_s": samples_per_s,
            "writers": writers,
            "datasets": datasets,
            "files": files,
            "mix": FRESHNESS_MIX,
            "heartbeat_interval_s": heartbeat_interval,  # None = the connector's default
        },
    )
    with scenario_env(services, "freshness", topics=True) as env:
        extra = (
            {}
            if heartbeat_interval is None
            else {"WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL": f"{heartbeat_interval:g}"}
        )
        stack = make_stack(env, **extra)
        http = httpx.Client(
            base_url=stack.base_url,
            timeout=30,
            headers={"x-iam-scopes": SCOPES},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )
        try:
            stack.start()
            stack.wait_ready(120)
            stack.wait_caught_up(None, 120)

            def read(min_lsn: int | None = None) -> int:
                body: dict[str, object] = {"sql": "SELECT 1 AS ok"}
                if min_lsn is not None:
                    body["min_lsn"] = format_lsn(min_lsn)
                return http.post("/sql/read", json=body).status_code

            read()  # open the keep-alive connection
            rtt = []
            for _ in range(20):
                started = time.perf_counter()
                read()
                rtt.append(time.perf_counter() - started)
            urls = {
                "compactor": f"http://127.0.0.1:{stack.compactor_metrics_port}/metrics",
                "connector": f"http://127.0.0.1:{stack.connector_metrics_port}/metrics",
            }
            before = {name: _scrape_or_empty(url) for name, url in urls.items()}
            before["query"] = _scrape_query(http)
            cpu_before = {name: cpu_seconds(component_pid(stack, name)) for name in stack.components}
            points: list[tuple[float, float, int]] = []  # (seconds into run, latency, status)
            lock = threading.Lock()
            pool = ThreadPoolExecutor(max_workers=16)
            run_started = [0.0]

            def probe(lsn: int, committed: float) -> None:
                try:
                    status = read(lsn)
                except Exception:
                    status = 0
                with lock:
                    points.append((committed - run_started[0], time.monotonic() - committed, status))

            def on_commit(at: float, lsn: int) -> None:
                if not run_started[0]:
                    run_started[0] = at
                pool.submit(probe, lsn, at)

            ran = run_writers(
                env.dsn,
                env.settings.catalog_schema,
                env.settings.storage_root,
                writers=writers,
                datasets=datasets,
                days=7,
                partitions_per_shard=32,
                rate=rate,
                duration=duration,
                seed=11,
                files=files,
                mix=FRESHNESS_MIX,
                samples_per_s=samples_per_s,
                on_commit=on_commit,
            )
            pool.shutdown(wait=True)
            after = {name: _scrape_or_empty(url) for name, url in urls.items()}
            after["query"] = _scrape_query(http)
            cpu_after = {name: cpu_seconds(component_pid(stack, name)) for name in stack.components}
        finally:
            http.close()
            stack.stop()
    summary = ran.summary
    ok = [lat for _, lat, status in points if status == 200]
    failed = len(points) - len(ok)
    p50, p99 = percentile(ok, 50), percentile(ok, 99)
    achieved = summary.commit_rate
    result.add(
        "catalog commits/s achieved", achieved, "/s", goal=f"{rate:g}/s offered", ok=achieved >= 0.95 * rate
    )
    result.add("commit -> visible p50", p50 * 1000, "ms", goal="< 250 ms", ok=p50 < 0.25)
    result.add("commit -> visible p99", p99 * 1000, "ms", goal="< 1 s", ok=p99 < 1.0)
    result.add("commit -> visible max", max(ok) * 1000 if ok else float("nan"), "ms")
    result.add("probes not answered 200 (timeouts/errors)", failed, "", goal="0", ok=failed == 0)
    result.add("local HTTP round trip (SELECT 1, idle) p50", percentile(rtt, 50) * 1000, "ms")
    stages = (
        ("connector", "walduck_connector_produce_latency_seconds", "connector: records handed -> Kafka ack"),
        (
            "compactor",
            "walduck_compactor_flush_latency_seconds",
            "compactor: window first record -> deltas ack",
        ),
        ("query", "walduck_delta_apply_duration_seconds", "context: one delta apply"),
        ("query", "walduck_end_to_end_latency_seconds", "commit -> applied in its context shard"),
    )
    for comp, metric, label in stages:
        for q in (0.5, 0.99):
            value = histogram_quantile(after.get(comp, {}), before.get(comp, {}), metric, q)
            if not math.isnan(value):
                result.add(f"{label} p{round(q * 100)} (histogram)", value * 1000, "ms")
    deltas = {
        kind: after["compactor"].get(f'walduck_compactor_deltas_out_total{{kind="{kind}"}}', 0.0)
        - before["compactor"].get(f'walduck_compactor_deltas_out_total{{kind="{kind}"}}', 0.0)
        for kind in ("delta", "heartbeat")
    }
    result.add("deltas produced (data / heartbeat)", f"{deltas['delta']:.0f} / {deltas['heartbeat']:.0f}", "")
    per_k = 1000 / summary.commits if summary.commits else float("nan")
    cpu = {name: (cpu_after[name] - cpu_before[name]) for name in cpu_after}
    cpu["workload writers"] = ran.cpu_s
    result.add(
        "CPU s per 1,000 commits (" + ", ".join(cpu) + ")",
        " / ".join(f"{value * per_k:.2f}" for value in cpu.values()),
        "s",
        goal=f"{summary.elapsed_s:.0f} s wall x 2 cores available",
    )
    result.series["cpu_s"] = cpu
    result.series["points"] = points
    result.series["per_writer_commits_per_s"] = [round(s.commit_rate, 1) for s in ran.per_writer]
    result.notes.append(
        f"{summary.commits} commits in {summary.elapsed_s:.1f} s by {writers} writer processes "
        f"({len(summary.dataset_ids)} datasets, files={files}: {ran.files_written} Parquet files written, "
        f"{ran.links_made} hard links); {len(points)} probes; operations {summary.operations}"
    )
    shards = env.settings.topic_partitions
    per_shard = [0] * shards
    for dataset_id in summary.dataset_ids:
        per_shard[partition_of(dataset_id, shards)] += 1
    result.series["datasets_per_shard"] = per_shard
    result.notes.append(
        f"datasets per context shard (Kafka partition): {per_shard}; a shard without datasets advances "
        "only with the connector's heartbeat, and every probe waits for it"
    )
    result.notes.append(
        "stage rows are bucket estimates from the components' histograms over the run; a probe waits until "
        "EVERY context shard passed its LSN, so probe latency - 'commit -> applied in its shard' is the wait "
        "for the other shards (a shard without traffic only advances with the connector's heartbeat)"
    )

    def draw(ax: object) -> None:
        xs = [p[0] for p in points if p[2] == 200]
        ys = [p[1] * 1000 for p in points if p[2] == 200]
        ax.plot(xs, ys, ".", markersize=3)  # type: ignore[attr-defined]
        ax.axhline(250, color="orange", linestyle="--", label="p50 goal")  # type: ignore[attr-defined]
        ax.axhline(1000, color="red", linestyle="--", label="p99 goal")  # type: ignore[attr-defined]
        ax.set_xlabel("seconds into the run")  # type: ignore[attr-defined]
        ax.set_ylabel("commit -> visible (ms)")  # type: ignore[attr-defined]
        ax.set_title(f"freshness at {achieved:.0f} commits/s (offered {rate:g})")  # type: ignore[attr-defined]
        ax.legend()  # type: ignore[attr-defined]

    result.plot("timeseries", draw)
    return result


def _scrape_query(http: httpx.Client) -> dict[str, float]:
    """The query service's /metrics (the client sends the admin scope it requires)."""
    try:
        return parse_prometheus(http.get("/metrics").text)
    except httpx.HTTPError:
        return {}
