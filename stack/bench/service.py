"""``bootstrap``, ``memory`` and ``hit-ratio``: one run of the whole pipeline over a big catalog.

1. bulk-load the catalog (``files='synthetic'``); in-process: the old full rebuild (plain views refreshed
   under the writer) and the new snapshot build step by step; then start connector + compactor + query service
   and time empty -> every partition visible through ``/sql/read`` (``bootstrap``, snapshot bootstrap);
   baseline in the same run: a replica replaying the deltas topic from offset 0; then admin rebuilds of one
   dataset and of all under ingestion, and ``verify`` (``stack/bench/rebuild.py``);
2. peak RSS (VmHWM) and RSS of the query service process idle, then under ``clients`` concurrent clients
   while a workload keeps ingesting (``memory``);
3. during that same load, the share of requests served without waiting for a rebuild, from the service's
   ``walduck_cache_events_total`` and ``walduck_rebuilds_total`` (``hit-ratio``).
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from stack.bench.contexts import open_store, timed
from stack.bench.env import BenchServices, scenario_env
from stack.bench.pipeline import (
    SCOPES,
    component_pid,
    count_visible,
    make_stack,
    query_log_lines,
    rss_bytes,
    scrape,
)
from stack.bench.rebuild import build_steps, join_rounds, rebuild_under_ingestion, replay_replica
from stack.bench.report import Result, percentile
from stack.workload.generator import Workload

GiB = 1 << 30


def _visible_or_zero(stack: object) -> int:
    try:
        return count_visible(stack)  # type: ignore[arg-type]
    except Exception:
        return -1


async def _clients(
    base_url: str, sql: str, clients: int, duration: float
) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + duration
    async with httpx.AsyncClient(
        base_url=base_url, timeout=30, limits=httpx.Limits(max_connections=clients)
    ) as http:

        async def one() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    resp = await http.post("/sql/read", json={"sql": sql}, headers={"x-iam-scopes": SCOPES})
                    statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                except httpx.HTTPError:
                    statuses[0] = statuses.get(0, 0) + 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(clients)))
    return latencies, statuses


def run_service(
    services: BenchServices,
    partitions: int,
    datasets: int,
    clients: int,
    load_s: float,
    ingest_rate: float,
    timeout: float,
) -> dict[str, Result]:
    params = {"partitions": partitions, "datasets": datasets, "clients": clients, "load_s": load_s}
    boot = Result("bootstrap", dict(params))
    mem = Result("memory", dict(params))
    hit = Result("hit-ratio", {**params, "ingest_rate": ingest_rate})
    with scenario_env(services, "service", topics=True) as env:
        load = env.bulk_load(datasets=datasets, partitions=partitions, files="synthetic")
        boot.notes.append(
            f"catalog: {load.partitions:,} partitions / {load.datasets} datasets, loaded in {load.elapsed_s:.1f} s"
        )

        # baseline: the OLD full rebuild (ContextStore.rebuild() of an empty context, every plain view refreshed
        # under the writer lock at its end: WALDUCK_CONTEXT_BUILD_REFRESH_VIEWS=true), in-process, same catalog
        store = open_store(env, "fullscan-old", build_refresh_views=True)
        try:
            old_s, _ = timed(store.rebuild, None, "bench")
            old_steps = dict(store.builder.last.steps)
        finally:
            store.close()
        # the new build, in-process, step by step (sinks/context/build.py)
        inproc_s = build_steps(env, boot)

        # WALDUCK_CONTEXT_BOOTSTRAP=snapshot (the default); the first replica publishes its context snapshot once
        # bootstrapped, then once the backlog settled (not by the interval: it is longer than the bench)
        snapdir = env.work_dir / "context-snapshots"
        stack = make_stack(
            env,
            WALDUCK_CONTEXT_SNAPSHOT_DIR=str(snapdir),
            WALDUCK_CONTEXT_SNAPSHOT_INTERVAL_S="36000",
            # again once the connector's initial snapshot has flowed through (the default 100k, scaled down for
            # --quick's catalog)
            WALDUCK_CONTEXT_SNAPSHOT_MAX_TAIL_CHANGES=str(min(100_000, max(1_000, load.partitions // 10))),
        )
        try:
            started = time.monotonic()
            stack.start()
            visible = -1
            while time.monotonic() - started < timeout:
                visible = _visible_or_zero(stack) if stack.ready() else -1
                if visible >= load.partitions:
                    break
                time.sleep(0.25)
            boot_s = time.monotonic() - started
            done = visible >= load.partitions
            # the baseline replay path: a new replica replaying the deltas topic from offset 0, started now
            # (the pipeline carries the connector's snapshot through the compactor meanwhile, as before)
            replay = replay_replica(env, load.partitions, timeout) if done else "not run"
            boot.add(
                "empty -> all partitions queryable through /sql/read (query service, snapshot bootstrap)",
                boot_s if done else f"not done after {timeout:.0f} s ({visible:,} visible)",
                "s",
                replay if isinstance(replay, float) else None,
                goal="< 10 s",
                ok=done and boot_s < 10,
            )
            boot.add(
                "baseline: new replica replaying the deltas topic from 0 (WALDUCK_CONTEXT_BOOTSTRAP=replay)",
                replay,
                "s",
            )
            # the operator's case: new replica processes joining the running pipeline (connector snapshot done),
            # built from PostgreSQL and seeded from the first replica's context snapshot, alternated
            if done:
                join_rounds(env, boot, load.partitions, timeout, snapdir)
            boot.add(
                "snapshot bootstrap of an empty context, in-process (sinks/context/build.py)", inproc_s, "s"
            )
            boot.add(
                "baseline: old full rebuild, plain views refreshed under the writer (WALDUCK_CONTEXT_BUILD_REFRESH_VIEWS=true)",
                old_s,
                "s",
                inproc_s,
            )
            for step, secs in old_steps.items():
                boot.add(f"  old full rebuild step: {step}", secs, "s")
            boot.notes.append(
                "query service timed from process start (stack.start()) to /ready and a /sql/read count over"
                " timestore_runtime.partitions reaching every partition; the replay replica is in-process, started"
                " once the first is ready, timed until its index holds every partition and every shard is"
                " bootstrapped; in-process figures on the same catalog, same run"
            )
            if not done:
                boot.notes.append(stack.logs()[-3000:])
                return {"bootstrap": boot, "memory": mem, "hit-ratio": hit}
            rebuild_under_ingestion(env, stack.base_url, boot, ingest_rate, timeout)
            # the service's own account of where the time went (its build log lines), next to the figures
            markers = ("bootstrapped shard(s)", "rebuilt all datasets", " published in ")
            logged = query_log_lines(stack, *markers)
            boot.notes.extend(f"query service log: {logged[m]}" for m in markers if m in logged)

            pid = component_pid(stack, "query")
            time.sleep(2)
            idle_rss, idle_peak = rss_bytes(pid)
            before = scrape(f"{stack.base_url}/metrics")

            # steady ingestion + clients
            stop = threading.Event()
            commits = [0]

            def ingest() -> None:
                with Workload(env.dsn, env.settings.catalog_schema, env.settings.storage_root, seed=3) as wl:
                    while not stop.is_set():
                        summary = wl.run(datasets=3, rate=ingest_rate, duration=min(2.0, load_s))
                        commits[0] += summary.commits

            rss_samples: list[int] = []

            def sample_rss() -> None:
                while not stop.is_set():
                    rss_samples.append(rss_bytes(pid)[0])
                    stop.wait(0.5)

            threads = [
                threading.Thread(target=ingest, daemon=True),
                threading.Thread(target=sample_rss, daemon=True),
            ]
            for t in threads:
                t.start()
            # the index, not the files: the catalog is synthetic (paths only)
            sql = (
                "SELECT dataset_slug, partition_count, total_rows FROM timestore_runtime.datasets"
                " ORDER BY partition_count DESC LIMIT 5"
            )
            latencies, statuses = asyncio.run(_clients(stack.base_url, sql, clients, load_s))
            stop.set()
            for t in threads:
                t.join(timeout=30)
            after = scrape(f"{stack.base_url}/metrics")
            _busy_rss, busy_peak = rss_bytes(pid)

            mem.add(
                "query service RSS idle (1 context)",
                idle_rss / GiB,
                "GiB",
                goal="< 2 GiB",
                ok=idle_rss < 2 * GiB,
            )
            mem.add(
                f"query service peak RSS under {clients} clients",
                busy_peak / GiB,
                "GiB",
                idle_peak / GiB,
                goal="< 2 GiB, flat",
                ok=busy_peak < 2 * GiB,
            )
            if rss_samples:
                growth = (max(rss_samples) - rss_samples[0]) / GiB
                mem.add("RSS growth during the load", growth, "GiB", goal="flat (< 0.1 GiB)", ok=growth < 0.1)
            mem.series["rss_bytes"] = rss_samples
            mem.notes.append(f"baseline column = idle peak; context holds {load.partitions:,} partitions")

            ok_count = statuses.get(200, 0)
            total = sum(statuses.values())
            hits = after.get('walduck_cache_events_total{event="hit"}', 0) - before.get(
                'walduck_cache_events_total{event="hit"}', 0
            )
            misses = after.get('walduck_cache_events_total{event="miss"}', 0) - before.get(
                'walduck_cache_events_total{event="miss"}', 0
            )
            rebuilds = sum(v for k, v in after.items() if k.startswith("walduck_rebuilds_total")) - sum(
                v for k, v in before.items() if k.startswith("walduck_rebuilds_total")
            )
            if hits + misses > 0:
                ratio = hits / (hits + misses)
                hit.add(
                    "hit ratio (walduck_cache_events_total)",
                    ratio * 100,
                    "%",
                    goal="≥ 99.9%",
                    ok=ratio >= 0.999,
                )
            else:
                hit.add(
                    "hit ratio (walduck_cache_events_total)",
                    "not emitted",
                    "",
                    goal="≥ 99.9%",
                    ok=False,
                )
                hit.notes.append(
                    "the query service does not increment walduck_cache_events_total yet, so the metric-based "
                    "figure is missing (reported as a miss)"
                )
            hit.add("rebuilds during the load (walduck_rebuilds_total)", rebuilds, "")
            hit.add("requests", total, "", goal=f"{clients} clients")
            hit.add("requests answered 200", ok_count / total * 100 if total else 0.0, "%")
            hit.add("request p50", percentile(latencies, 50) * 1000, "ms")
            hit.add("request p99", percentile(latencies, 99) * 1000, "ms")
            hit.add("catalog commits during the load", commits[0], "", goal=f"{ingest_rate:g}/s offered")
            hit.notes.append(f"statuses: {statuses}; query: {sql}")
        finally:
            stack.stop()
    return {"bootstrap": boot, "memory": mem, "hit-ratio": hit}
