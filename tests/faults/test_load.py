"""Scenario 6: 50 concurrent clients (httpx async) mix /sql/read, /sql/schema and /admin/sql/runtime-cache for
15 s (long: 60 s) while a workload's deltas apply: zero errors, no dropped connection; p99 recorded."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import httpx
import pytest

from faults.faultkit import BackgroundWorkload, assert_zero_drift
from stack.local import Stack

SCOPES = {"x-iam-scopes": "timestore:admin,timestore:sql:read,timestore:read"}
CLIENTS = 50
# enough query slots and queue wait that 50 clients are served, not shed with 429 (back-pressure is tested
# by the service's own tests; here every request must succeed)
LOAD_ENV = {"WALDUCK_QUERY_MAX_CONCURRENT": "8", "WALDUCK_QUERY_QUEUE_WAIT_S": "30"}


async def client_loop(
    base: str, seed: int, until: float, latencies: list[float], errors: list[str], views: list[str]
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, headers=SCOPES, timeout=30) as client:
        while time.monotonic() < until:
            pick = rng.random()
            began = time.monotonic()
            try:
                if pick < 0.7:
                    view = rng.choice(views)
                    resp = await client.post(
                        "/sql/read",
                        json={"sql": f'SELECT count(*) AS n, sum(value) AS s FROM timestore."{view}"'},
                    )
                elif pick < 0.9:
                    resp = await client.get("/sql/schema")
                else:
                    resp = await client.get("/admin/sql/runtime-cache")
                if resp.status_code != 200:
                    errors.append(f"{resp.request.url.path} {resp.status_code} {resp.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.monotonic() - began)


async def _load(make_stack, seconds: float) -> None:
    stack: Stack = await make_stack(**LOAD_ENV)
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    workload = BackgroundWorkload(stack, seed=77, duration=seconds + 5, rate=5, mix={"ingest": 1}).start()
    await asyncio.sleep(2)
    resp = await asyncio.to_thread(
        stack.read, "SELECT dataset_slug FROM timestore_runtime.datasets", scopes=SCOPES["x-iam-scopes"]
    )
    from sinks.context.naming import sanitize_view_name

    views = [sanitize_view_name(r["dataset_slug"]) for r in resp.json()["rows"]]
    assert views, resp.text
    latencies: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(client_loop(stack.base_url, i, until, latencies, errors, views) for i in range(CLIENTS))
    )
    await asyncio.to_thread(workload.join, 120)
    qs = statistics.quantiles(latencies, n=100)
    print(
        f"[faults] load clients={CLIENTS} seconds={seconds} requests={len(latencies)} "
        f"rps={len(latencies) / seconds:.0f} errors={len(errors)} p50_ms={qs[49] * 1000:.0f} "
        f"p99_ms={qs[98] * 1000:.0f} max_ms={max(latencies) * 1000:.0f}"
    )
    assert not errors, f"{len(errors)} errors, e.g. {errors[:5]}"
    assert stack.components["query"].alive
    await asyncio.to_thread(assert_zero_drift, stack, 180)


async def test_fifty_clients_short(make_stack) -> None:
    await _load(make_stack, 15)


@pytest.mark.long
async def test_fifty_clients_long(make_stack) -> None:
    await _load(make_stack, 60)
