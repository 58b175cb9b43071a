"""Scenario 1: kill -9 the connector, the compactor and the query service in turn at seeded random moments
during a sustained workload, restarting each; afterwards zero drift (verify + SQL == files)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from faults.faultkit import BackgroundWorkload, assert_zero_drift
from stack.local import COMPONENTS, Stack


def kill_in_turn(stack: Stack, kills: int, seed: int) -> list[tuple[str, float, float]]:
    """``kills`` crashes cycling connector -> compactor -> query; (component, at_s, down_s) for each."""
    rng = random.Random(seed)
    started = time.monotonic()
    done: list[tuple[str, float, float]] = []
    for i in range(kills):
        name = COMPONENTS[i % len(COMPONENTS)]
        time.sleep(rng.uniform(0.5, 3.0))
        comp = stack.components[name]
        assert comp.alive, f"{name} died by itself before kill {i}:\n{comp.tail()}"
        at = time.monotonic() - started
        comp.kill()
        down = rng.uniform(0.1, 1.5)
        time.sleep(down)
        comp.start()
        comp.restarts += 1
        done.append((name, round(at, 2), round(down, 2)))
    return done


async def _crash_run(make_stack, kills: int, seed: int, duration: float) -> None:
    stack: Stack = await make_stack()
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    workload = BackgroundWorkload(stack, seed=seed, duration=duration, rate=5).start()
    crashes = await asyncio.to_thread(kill_in_turn, stack, kills, seed)
    summary = await asyncio.to_thread(workload.join, duration + 60)
    await asyncio.to_thread(stack.wait_ready, 180)
    began = time.monotonic()
    report = await asyncio.to_thread(assert_zero_drift, stack, 180)
    print(
        f"[faults] crash kills={len(crashes)} plan={crashes} commits={summary.commits} "
        f"ops={summary.operations} datasets={report.datasets} rows_checked={report.rows_checked} drift=0 "
        f"catch_up_after_workload_s={time.monotonic() - began:.1f}"
    )
    for name in COMPONENTS:
        assert stack.components[name].restarts >= kills // 3
        assert stack.components[name].alive, stack.components[name].tail()


async def test_kill9_each_component_twice_zero_drift(make_stack) -> None:
    await _crash_run(make_stack, kills=6, seed=1234, duration=25)


@pytest.mark.long
async def test_kill9_twenty_times_zero_drift(make_stack) -> None:
    await _crash_run(make_stack, kills=20, seed=4321, duration=70)
