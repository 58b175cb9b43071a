"""``walduck bench jobs``: SQL jobs on a warm tail layer, and what 20 concurrent jobs cost ``/sql/read``.

1. A chain over the big dataset: ``01_days.sql`` aggregates the dataset per day, ``02_spin.sql`` is pure
   DuckDB work sized (``--spin``, re-sized once if needed) so the tail takes ≥ 5 s; the head reads both.
   The first run replays the tail (miss); then the head is edited ``repeats`` times (hits): the goal is the
   head stage < 100 ms on the warm layer (end-to-end submit → completed, ``wait_ms``, is shown beside it).
2. ``/sql/read`` p99 of the 1% range query from ``clients`` clients, alternating phases without and with
   ``jobs`` concurrent jobs (each a cold tail of about a second; they queue for ``WALDUCK_JOBS_MAX_CONCURRENT``
   slots), in one process on the same store: goal p99 with jobs ≤ 1.2× without.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from sinks.service.app import create_app
from sinks.service.jobs.settings import JobSettings
from sinks.service.settings import QuerySettings
from stack.bench.dataset import big_dataset
from stack.bench.env import BenchServices, scenario_env
from stack.bench.report import Result, percentile

USER = {"x-iam-user": "bench"}


def _spin_sql(size: int, salt: int = 0) -> str:
    return (
        "CREATE TABLE spin AS SELECT count(*) AS n, sum(hash(a.range * b.range + "
        f"{salt})) AS h FROM range({size}) a, range({size}) b"
    )


def _chain(view: str, spin: int, head: str, salt: int = 0) -> dict[str, str]:
    return {
        "01_days.sql": (
            f"CREATE TABLE days AS SELECT date_trunc('day', \"timestamp\") AS day, count(*) AS n, sum(value) AS total"
            f" FROM timestore.{view} GROUP BY ALL"
        ),
        "02_spin.sql": _spin_sql(spin, salt),
        "03_head.sql": head,
    }


async def _job(
    http: httpx.AsyncClient, tree: dict[str, str], wait_ms: int = 60_000, poll_s: float = 0.02
) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    r = await http.post(
        "/v1/jobs", json={"project_tree": tree, "head_path": "03_head.sql", "wait_ms": wait_ms}, headers=USER
    )
    body = r.json()
    while body.get("status") not in ("completed", "failed", "canceled"):
        await asyncio.sleep(poll_s)
        body = (await http.get(f"/v1/jobs/{body['job_id']}", headers=USER)).json()
    return body, time.perf_counter() - started


async def _reads(http: httpx.AsyncClient, sql: str, clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            r = await http.post("/sql/read", json={"sql": sql}, headers=USER)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(clients)))
    return latencies


async def _bench(
    result: Result, app: Any, big: Any, spin: int, repeats: int, jobs: int, clients: int, read_s: float
) -> None:
    view = big.view.view_name
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as http:
        head = "SELECT d.day, d.n, s.n AS spun FROM days d, spin s ORDER BY d.day"
        cold, _ = await _job(http, _chain(view, spin, head))
        tail_ms = cold["durations_ms"].get("tail_replay", 0.0)
        if cold["status"] == "completed" and tail_ms < 5000:
            spin = int(spin * (5600 / max(tail_ms, 1.0)) ** 0.5)
            cold, _ = await _job(http, _chain(view, spin, head))
            tail_ms = cold["durations_ms"].get("tail_replay", 0.0)
        result.notes.append(f"cold run: status {cold['status']}, layer {cold['layer']}, spin {spin}² rows")
        result.add("tail replay (cold, miss)", tail_ms, "ms", goal="≥ 5000", ok=tail_ms >= 5000)
        heads: list[float] = []
        e2e: list[float] = []
        layers: list[str] = []
        for i in range(repeats):
            edited = (
                f"SELECT d.day, d.n + {i} AS n, s.n AS spun FROM days d, spin s WHERE d.n >= 0 ORDER BY d.day"
            )
            warm, took = await _job(http, _chain(view, spin, edited))
            heads.append(warm["durations_ms"].get("head", float("nan")))
            e2e.append(took * 1000.0)
            layers.append(warm["layer"])
        result.series["warm_head_ms"] = heads
        result.series["warm_end_to_end_ms"] = e2e
        result.notes.append(f"warm runs: layers {sorted(set(layers))}")
        h50 = percentile(heads, 50)
        result.add(
            "head on warm layer p50 (head stage)", h50, "ms", baseline=tail_ms, goal="< 100", ok=h50 < 100
        )
        result.add("head on warm layer p99 (head stage)", percentile(heads, 99), "ms")
        result.add(
            "warm job end-to-end p50 (submit → completed)", percentile(e2e, 50), "ms", baseline=tail_ms
        )

        cancels: list[float] = []
        forever = "SELECT count(*) AS n FROM range(100000000000) a, range(10) b"
        for _ in range(5):
            r = await http.post(
                "/v1/jobs", json={"project_tree": {"01.sql": forever}, "head_path": "01.sql"}, headers=USER
            )
            job_id = r.json()["job_id"]
            while True:  # until DuckDB runs the head
                if (await http.get(f"/v1/jobs/{job_id}", headers=USER)).json()["stage"] == "head":
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            await http.post(f"/v1/jobs/{job_id}/cancel", headers=USER)
            while True:  # until canceled and the slot is free
                status = (await http.get(f"/v1/jobs/{job_id}", headers=USER)).json()["status"]
                if status == "canceled" and not app.state.jobs.runner.running:
                    break
                await asyncio.sleep(0.002)
            cancels.append((time.perf_counter() - started) * 1000.0)
        result.series["cancel_ms"] = cancels
        worst = max(cancels)
        result.add(
            "cancel mid-head → canceled, slot free (max of 5)", worst, "ms", goal="< 1000", ok=worst < 1000
        )

        small = max(2000, int(spin / 3))
        base: list[float] = []
        loaded: list[float] = []
        sql = big.range_sql()
        await _reads(http, sql, clients, 1.0)  # warm-up
        for phase in range(2):
            base += await _reads(http, sql, clients, read_s)
            salt = 1000 * (phase + 1)
            tasks = [
                asyncio.create_task(_job(http, _chain(view, small, head, salt + j), wait_ms=0, poll_s=1.0))
                for j in range(jobs)
            ]
            await asyncio.sleep(0.5)
            loaded += await _reads(http, sql, clients, read_s)
            for t in tasks:
                t.cancel()
            for job in app.state.jobs.jobs.all():
                if not job.state.terminal:
                    app.state.jobs.runner.cancel(job)
            await asyncio.sleep(0.5)
        b99, l99 = percentile(base, 99), percentile(loaded, 99)
        result.series["read_base_s"] = base
        result.series["read_with_jobs_s"] = loaded
        result.add("/sql/read p50 without jobs", percentile(base, 50) * 1000, "ms")
        result.add(
            "/sql/read p50 with jobs",
            percentile(loaded, 50) * 1000,
            "ms",
            baseline=percentile(base, 50) * 1000,
        )
        result.add("/sql/read p99 without jobs", b99 * 1000, "ms")
        ratio = l99 / b99 if b99 else float("nan")
        result.add(f"/sql/read p99 with {jobs} concurrent jobs", l99 * 1000, "ms", baseline=b99 * 1000)
        result.add("/sql/read p99 with jobs / without", ratio, "×", goal="≤ 1.2", ok=ratio <= 1.2)
        result.notes.append(
            f"/sql/read samples: {len(base)} without, {len(loaded)} with jobs; {clients} clients"
        )


def run_jobs(
    services: BenchServices, partitions: int, spin: int, repeats: int, jobs: int, clients: int, read_s: float
) -> Result:
    result = Result(
        "jobs",
        {
            "partitions": partitions,
            "spin": spin,
            "repeats": repeats,
            "jobs": jobs,
            "clients": clients,
            "read_s": read_s,
        },
    )
    with scenario_env(services, "jobs") as env, big_dataset(env, partitions) as big:
        settings = QuerySettings(iam_open=True)
        job_settings = JobSettings(layer_dir=str(env.work_dir / "layers"))
        result.notes.append(
            f"dataset: {big.partitions:,} partitions; job slots {job_settings.max_concurrent}, "
            f"{job_settings.duckdb_threads} DuckDB thread(s) each; /sql/read slots {settings.max_concurrent}"
        )
        app = create_app(big.store, settings, job_settings=job_settings)
        try:
            asyncio.run(_bench(result, app, big, spin, repeats, jobs, clients, read_s))
        finally:
            app.state.jobs.runner.close()
    return result
