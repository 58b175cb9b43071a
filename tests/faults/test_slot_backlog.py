"""Scenario 3: the connector stopped under load; the slot keeps the WAL; restarted, the connector catches up
from the slot, ``walduck_connector_replication_lag_bytes`` shows the backlog and drains to 0; zero drift."""

from __future__ import annotations

import asyncio
import time

import psycopg

from faults.faultkit import BackgroundWorkload, assert_zero_drift, metric_value
from stack.local import Stack

LAG = "walduck_connector_replication_lag_bytes"


def slot_backlog_bytes(stack: Stack) -> int:
    with psycopg.connect(stack.settings.pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active "
            "FROM pg_replication_slots WHERE slot_name = %s",
            [stack.settings.slot_name],
        ).fetchone()
    assert row is not None, "the replication slot is gone"
    assert row[1] is False, "slot still active while the connector is stopped"
    return int(row[0])


def watch_lag(stack: Stack, timeout: float) -> tuple[list[float], float]:
    """Scrape the lag gauge every 50 ms until it has shown a backlog and then reads 0; (samples, drain_s)."""
    url = f"http://127.0.0.1:{stack.connector_metrics_port}/metrics"
    samples: list[float] = []
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            value = metric_value(url, LAG)
        except Exception:
            value = None  # metrics port not up yet
        if value is not None:
            samples.append(value)
            if value == 0 and any(s > 0 for s in samples):
                return samples, time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError(f"lag never showed a backlog and drained to 0 in {timeout}s: {samples[-20:]}")


async def test_connector_down_under_load_catches_up_from_slot(make_stack) -> None:
    stack: Stack = await make_stack()
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    connector = stack.components["connector"]
    connector.stop()
    workload = BackgroundWorkload(stack, seed=99, duration=10, rate=0, datasets=3).start()
    summary = await asyncio.to_thread(workload.join, 120)
    backlog = await asyncio.to_thread(slot_backlog_bytes, stack)
    assert backlog > 100_000, f"expected a WAL backlog held by the slot, got {backlog} bytes"
    connector.start()
    samples, drain_s = await asyncio.to_thread(watch_lag, stack, 120)
    report = await asyncio.to_thread(assert_zero_drift, stack, 180)
    print(
        f"[faults] slot backlog_bytes={backlog} commits_while_down={summary.commits} "
        f"lag_max={max(samples):.0f} lag_samples={len(samples)} drain_to_0_s={drain_s:.1f} "
        f"rows_checked={report.rows_checked} drift=0"
    )
    assert max(samples) > 0
