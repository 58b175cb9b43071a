"""Parts of ``walduck bench bootstrap`` about building contexts from PostgreSQL (issue 15).

* :func:`build_steps`: the snapshot bootstrap of an empty context in-process, per step (COPY + Arrow, delete,
  inserts, columns, commit), then the first dataset listing (``DatasetCache._load``) and a budgeted view refresh;
* :func:`join_replica`: a second query-service process joining the running pipeline (an operator adding a
  replica), timed from process start to every partition visible through its ``/sql/read``; built from
  PostgreSQL, or seeded from the first replica's context snapshot (:func:`join_rounds` alternates the two);
* :func:`replay_replica`: the baseline, a new replica replaying the deltas topic from offset 0
  (``WALDUCK_CONTEXT_BOOTSTRAP=replay``) until its index holds every partition;
* :func:`rebuild_under_ingestion`: admin rebuilds of one dataset and of all datasets on the running query
  service while a workload ingests (durations from the service's admin snapshot), then ``verify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from sinks.context import context_snapshot
from sinks.context.consumer import DeltaConsumer
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.exceptions import ContextError
from sinks.settings import SinkSettings
from sinks.verify import verify
from stack.bench.contexts import open_store, timed
from stack.bench.env import ScenarioEnv
from stack.bench.pipeline import SCOPES
from stack.bench.report import Result
from stack.workload.generator import Workload


def build_steps(env: ScenarioEnv, res: Result) -> float:
    """Snapshot bootstrap of an empty context in-process (every shard, E = 0); seconds, steps as rows."""
    store = open_store(env, "snapshot-inproc")
    try:
        boot_s, timings = timed(store.bootstrap, dict.fromkeys(range(env.settings.topic_partitions), 0))
        for step, secs in timings.steps.items():
            res.add(f"  snapshot build step: {step}", secs, "s")
        list_s, views = timed(store.datasets)
        res.add("  first dataset listing after the build (DatasetCache._load)", list_s, "s")
        refresh_s, _ = timed(store.refresh_views)
        res.add(
            f"  one bounded plain-view refresh after the build ({store.views_pending()} of {len(views)} left)",
            refresh_s,
            "s",
        )
        return boot_s
    finally:
        store.close()


def join_replica(
    env: ScenarioEnv,
    partitions: int,
    timeout: float,
    name: str = "replica-2",
    notes: list[str] | None = None,
    **extra_env: str,
) -> float | str:
    """Seconds from starting a new query-service process (own, empty context directory ``name`` and port) next
    to the running pipeline until its ``/sql/read`` counts ``partitions`` partitions; its log line saying how
    the context was made (seeded from a snapshot or built from PostgreSQL) is appended to ``notes``."""
    from stack.bench.pipeline import count_visible, make_stack, query_log_lines

    own = dataclasses.replace(env, settings=env.settings.model_copy(update={"data_dir": env.work_dir / name}))
    replica = make_stack(own, **extra_env)
    replica.work_dir = env.work_dir / f"{name}-stack"
    try:
        started = time.monotonic()
        replica.start(("query",))
        visible = -1
        while time.monotonic() - started < timeout:
            if replica.ready():
                with contextlib.suppress(httpx.HTTPError):
                    visible = count_visible(replica)
                if visible >= partitions:
                    return time.monotonic() - started
            time.sleep(0.1)
        return f"not done after {timeout:.0f} s ({visible:,} visible)"
    finally:
        if notes is not None:
            with contextlib.suppress(Exception):
                how = query_log_lines(replica, "context seeded from", "bootstrapped shard(s)")
                notes.append(f"{name}: " + next(iter(how.values()), "no build line logged"))
        replica.stop()


def join_rounds(
    env: ScenarioEnv, res: Result, partitions: int, timeout: float, snapdir: Path, rounds: int = 2
) -> None:
    """New replicas joining the running pipeline, alternately built from PostgreSQL and seeded from the context
    snapshot the first replica published into ``snapdir`` (waited for first), ``rounds`` of each."""
    from stack.bench.pipeline import topic_records

    s = env.settings
    # the deltas the pipeline holds now (the connector's initial snapshot has flowed through: the replay baseline
    # before this read all of it); a seeded replica replays those its snapshot does not cover
    published = wait_for_snapshot(snapdir, min(timeout, 60))
    ends = topic_records(s, s.deltas_topic, s.topic_partitions)
    res.notes.append(
        f"context snapshot published by the first replica: {published}; deltas in the topic: {ends:,}"
    )
    from_pg: list[float | str] = []
    from_snap: list[float | str] = []
    for i in range(rounds):
        from_pg.append(
            join_replica(
                env, partitions, timeout, f"replica-pg-{i}", res.notes, WALDUCK_CONTEXT_SNAPSHOT_DIR=""
            )
        )
        from_snap.append(
            join_replica(
                env,
                partitions,
                timeout,
                f"replica-snap-{i}",
                res.notes,
                WALDUCK_CONTEXT_SNAPSHOT_DIR=str(snapdir),
                WALDUCK_CONTEXT_SNAPSHOT_INTERVAL_S="0",
            )
        )
    pg_ok = [v for v in from_pg if isinstance(v, float)]
    snap_ok = [v for v in from_snap if isinstance(v, float)]
    pg_median = statistics.median(pg_ok) if pg_ok else None
    for i, (pg, snap) in enumerate(zip(from_pg, from_snap, strict=True)):
        res.add(
            f"new replica joining the running pipeline, built from PostgreSQL (round {i + 1})",
            pg,
            "s",
            goal="< 10 s",
            ok=isinstance(pg, float) and pg < 10,
        )
        res.add(
            f"new replica joining the running pipeline, seeded from the context snapshot (round {i + 1})",
            snap,
            "s",
            pg if isinstance(pg, float) else None,
            goal="< 10 s",
            ok=isinstance(snap, float) and snap < 10,
        )
    if snap_ok and pg_median is not None:
        res.notes.append(
            f"joining replica medians: from PostgreSQL {pg_median:.1f} s, from the context snapshot"
            f" {statistics.median(snap_ok):.1f} s (rounds alternated, same run)"
        )


def wait_for_snapshot(snapdir: Path, timeout: float, manifests: int = 2) -> str:
    """The newest manifest, once the first replica published ``manifests`` of them (the one at its bootstrap and
    the one after the connector's initial snapshot had flowed through, ``publish_due``'s settled tail), or after
    ``timeout`` whatever is there: name, deltas covered (its shards' offsets + 1), bytes of its objects."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ContextError, FileNotFoundError, OSError):
            doc = context_snapshot.latest_manifest(snapdir)
            count = len(list((snapdir / "manifests").glob("*.json")))
            if doc is not None and (count >= manifests or time.monotonic() >= deadline):
                covered = sum(v["deltas_offset"] + 1 for v in doc["shards"].values())
                size = sum(
                    (snapdir / "objects" / f"{t['object']}.parquet").stat().st_size
                    for t in doc["tables"].values()
                )
                rows = doc["tables"]["partitions"]["rows"]
                return (
                    f"{doc['name']} ({count} published), {rows:,} partitions, {covered:,} deltas covered,"
                    f" {size / 1e6:.1f} MB of Parquet"
                )
        if time.monotonic() >= deadline + 30:
            return f"none after {timeout:.0f} s"
        time.sleep(0.2)


def replay_replica(env: ScenarioEnv, partitions: int, timeout: float) -> float | str:
    """Seconds until a replay-mode replica's index holds ``partitions`` rows (the old bootstrap path)."""
    store = open_store(env, "replay", sink_bootstrap="replay")
    consumer = DeltaConsumer(store)

    async def run() -> float | str:
        started = time.monotonic()
        task = asyncio.create_task(consumer.run())
        try:
            while time.monotonic() - started < timeout:
                with store.reader() as cur:
                    n = cur.execute(f"SELECT count(*) FROM {WD}.partitions").fetchone()[0]
                if n >= partitions and all(p.bootstrapped for p in store.progress().values()):
                    return time.monotonic() - started
                await asyncio.sleep(0.5)
            return f"not done after {timeout:.0f} s ({n:,} partitions)"
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 60)

    try:
        return asyncio.run(run())
    finally:
        store.close()


def _snapshot(base_url: str) -> dict[str, Any]:
    resp = httpx.get(f"{base_url}/admin/sql/runtime-cache", headers={"x-iam-scopes": SCOPES}, timeout=60)
    resp.raise_for_status()
    return resp.json()["snapshot"]  # type: ignore[no-any-return]


def _rebuild(base_url: str, dataset_id: str | None, timeout: float) -> tuple[float, float]:
    """(service-side duration s, request -> result seen s) of one admin rebuild."""

    def last(snap: dict[str, Any]) -> dict[str, Any] | None:
        if dataset_id is None:
            return snap.get("lastFullRebuild")
        for d in snap["datasets"]:
            if d["datasetId"] == dataset_id:
                return d.get("lastRebuild")
        return None

    before = (last(_snapshot(base_url)) or {}).get("at")
    body = {"datasetId": dataset_id, "reason": "bench"} if dataset_id else {"scope": "all", "reason": "bench"}
    started = time.monotonic()
    resp = httpx.post(
        f"{base_url}/admin/sql/runtime-cache/invalidate",
        json=body,
        headers={"x-iam-scopes": SCOPES},
        timeout=60,
    )
    resp.raise_for_status()
    while time.monotonic() - started < timeout:
        info = last(_snapshot(base_url))
        if info and info.get("at") != before and info.get("result"):
            if info["result"] != "ok":
                raise RuntimeError(f"rebuild failed: {info}")
            return float(info["durationMs"]) / 1000, time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"rebuild of {dataset_id or 'all'} not done after {timeout:.0f} s")


def rebuild_under_ingestion(
    env: ScenarioEnv, base_url: str, res: Result, rate: float, timeout: float
) -> None:
    """Admin rebuilds (one dataset, all) on the running service while a workload ingests; then verify."""
    stop = threading.Event()
    commits = [0]

    def ingest() -> None:
        with Workload(env.dsn, env.settings.catalog_schema, env.settings.storage_root, seed=5) as wl:
            while not stop.is_set():
                commits[0] += wl.run(datasets=3, rate=rate, duration=2.0).commits

    worker = threading.Thread(target=ingest, daemon=True)
    worker.start()
    try:
        time.sleep(2)
        views = sorted(_snapshot(base_url)["datasets"], key=lambda d: -int(d["partitionCount"]))
        biggest = views[0]
        one, one_wall = _rebuild(base_url, biggest["datasetId"], timeout)
        every, every_wall = _rebuild(base_url, None, timeout)
    finally:
        stop.set()
        worker.join(30)
    res.add(
        f"admin rebuild of one dataset under ingestion ({int(biggest['partitionCount']):,} partitions)",
        one,
        "s",
        goal="< 1 s",
        ok=one < 1,
    )
    res.add("  request -> result visible in the admin snapshot", one_wall, "s")
    res.add("admin rebuild of all datasets under ingestion", every, "s", goal="< 10 s", ok=every < 10)
    res.add("  request -> result visible in the admin snapshot", every_wall, "s")
    drifts = verify(env.settings, SinkSettings(), url=base_url, attempts=5)
    res.add("walduck verify drifts after the rebuilds", len(drifts), "", goal="0", ok=not drifts)
    res.notes.append(f"rebuilds under {rate:g} commits/s offered ({commits[0]} catalog commits meanwhile)")
