"""Query-service failover (issue 21), on the whole stack under a workload:

1. kill -9 the query service and start it again: it reopens its context file warm and serves a read-your-writes
   answer (``min_lsn`` = PostgreSQL's LSN at the kill) within seconds; the new process rebuilds nothing and
   re-applies nothing the context already held (its deltas consumer resumed after the stored offsets);
2. during an outage of its peers (compactor and connector killed), ``/sql/read`` without ``min_lsn`` keeps
   answering 200 from the context it has, and its staleness header grows with the outage."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from faults.faultkit import BackgroundWorkload, assert_zero_drift
from stack.local import Stack

ADMIN = {"x-iam-scopes": "timestore:admin"}


def service_metric(stack: Stack, name: str, labels: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{stack.base_url}/metrics", headers=ADMIN, timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def first_ryw_answer(stack: Stack, lsn: int, limit_s: float) -> float:
    """Seconds until ``/sql/read`` with ``min_lsn=lsn`` answers 200 (connection refused while it starts)."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        try:
            if stack.read("SELECT 1 AS ok", min_lsn=lsn, timeout=5).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no read-your-writes answer within {limit_s} s\n{stack.logs()}")


async def test_query_service_kill9_restarts_warm_and_serves_again(make_stack) -> None:
    stack: Stack = await make_stack()
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    workload = BackgroundWorkload(stack, seed=2121, duration=20, rate=5).start()
    took: list[float] = []
    for _ in range(3):
        await asyncio.sleep(3)
        query = stack.components["query"]
        lsn = stack.current_lsn()
        query.kill()
        query.start()
        query.restarts += 1
        took.append(await asyncio.to_thread(first_ryw_answer, stack, lsn, 30))
        # the new process: nothing rebuilt from PostgreSQL, nothing it already held applied again
        assert service_metric(stack, "walduck_rebuilds_total") == 0
        assert service_metric(stack, "walduck_deltas_applied_total", {"result": "duplicate"}) == 0
    summary = await asyncio.to_thread(workload.join, 90)
    report = await asyncio.to_thread(assert_zero_drift, stack, 180)
    print(
        f"[failover] query kill -9 x{len(took)}: first read-your-writes answer after "
        f"{[round(t, 2) for t in took]} s; commits={summary.commits} rows_checked={report.rows_checked} drift=0"
    )
    # how fast is the bench's claim (walduck bench failover, measured side by side, docs/reliability.md); a
    # wall-clock bound here would fail on a loaded CI machine for no fault of the code. What this test holds
    # is the mechanism: each restart answered read-your-writes (within first_ryw_answer's 30 s), warm
    assert len(took) == 3, took


async def test_reads_without_min_lsn_keep_answering_while_the_peers_are_down(make_stack) -> None:
    stack: Stack = await make_stack()
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    workload = BackgroundWorkload(stack, seed=2122, duration=4, rate=5).start()
    await asyncio.to_thread(workload.join, 60)
    await asyncio.to_thread(stack.wait_caught_up, None, 60)
    for name in ("compactor", "connector"):
        stack.components[name].kill()
    outage_s = 6.0
    statuses: list[int] = []
    staleness: list[float] = []
    began = time.monotonic()
    while time.monotonic() - began < outage_s:
        resp = await asyncio.to_thread(
            stack.read, "SELECT count(*) AS n FROM timestore_runtime.datasets", scopes="timestore:admin"
        )
        statuses.append(resp.status_code)
        if "x-walduck-staleness-seconds" in resp.headers:
            staleness.append(float(resp.headers["x-walduck-staleness-seconds"]))
        await asyncio.sleep(0.25)
    for name in ("connector", "compactor"):
        stack.components[name].start()
    await asyncio.to_thread(stack.wait_caught_up, None, 60)
    print(
        f"[failover] peers down {outage_s:.0f} s: {len(statuses)} reads without min_lsn, "
        f"statuses {sorted(set(statuses))}, staleness {staleness[0]:.1f} -> {staleness[-1]:.1f} s"
    )
    assert set(statuses) == {200}, statuses
    assert len(staleness) == len(statuses), "a read answered without its staleness header"
    assert staleness[-1] - staleness[0] >= outage_s - 2.0, staleness
