"""Scenario 2: restart Kafka, then PostgreSQL, mid-workload, on a PostgreSQL + Kafka of this test's own (the
session services are shared). The pipeline recovers by itself (no component restarted by the test); zero
drift; time to recover recorded."""

from __future__ import annotations

import asyncio
import time

from faults.conftest import IAM_ENV, OwnServices, new_stack
from faults.faultkit import BackgroundWorkload, assert_zero_drift
from stack.local import COMPONENTS, Stack


def restart_and_time(stack: Stack, restart, timeout: float = 240) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(restart duration, seconds from the service being back to the query service serving its current LSN)."""
    began = time.monotonic()
    restart()
    back = time.monotonic()
    stack.wait_caught_up(None, timeout)
    return back - began, time.monotonic() - back


async def test_kafka_then_postgres_restart_mid_workload(own_services: OwnServices, tmp_path) -> None:
    stack = new_stack(own_services.settings, tmp_path, dict(IAM_ENV))
    await asyncio.to_thread(stack.prepare)
    try:
        stack.start()
        await asyncio.to_thread(stack.wait_ready, 180)
        workload = BackgroundWorkload(stack, seed=21, duration=40, rate=5, retry_errors=True).start()
        await asyncio.sleep(4)
        kafka_down, kafka_recover = await asyncio.to_thread(
            restart_and_time, stack, own_services.kafka.restart
        )
        await asyncio.sleep(3)
        pg_down, pg_recover = await asyncio.to_thread(restart_and_time, stack, own_services.postgres.restart)
        summary = await asyncio.to_thread(workload.join, 180)
        for name in COMPONENTS:
            assert stack.components[name].alive, f"{name} exited:\n{stack.components[name].tail()}"
            assert stack.components[name].restarts == 0
        report = await asyncio.to_thread(assert_zero_drift, stack, 240)
        print(
            f"[faults] infra kafka_restart_s={kafka_down:.1f} kafka_recover_s={kafka_recover:.1f} "
            f"pg_restart_s={pg_down:.1f} pg_recover_s={pg_recover:.1f} commits={summary.commits} "
            f"workload_errors={len(workload.errors)} rows_checked={report.rows_checked} drift=0"
        )
    finally:
        stack.stop()
