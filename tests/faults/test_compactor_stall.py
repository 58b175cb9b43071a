"""A compactor frozen past its Kafka session (SIGSTOP, as a long GC/CPU stall or a paused VM would) during a
sustained workload: the group evicts it; on resume its next offset commit may be refused
(``CommitFailedError`` -> ``walduck_compactor_commits_lost_total``) or it rejoins first. Either way it must
keep running (no exit, no restart) and the contexts must end with zero drift."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from faults.faultkit import BackgroundWorkload, assert_zero_drift, metric_value
from stack.local import Stack

SESSION_TIMEOUT_MS = 6000  # the broker's minimum: the stall below outlasts it


def freeze(stack: Stack, name: str, seconds: float) -> None:
    comp = stack.components[name]
    assert comp.proc is not None and comp.alive, comp.tail()
    os.kill(comp.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(comp.proc.pid, signal.SIGCONT)


async def test_compactor_frozen_past_its_session_keeps_running_zero_drift(make_stack) -> None:
    stack: Stack = await make_stack(WALDUCK_COMPACTOR_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS))
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    workload = BackgroundWorkload(stack, seed=2024, duration=25, rate=5).start()
    await asyncio.sleep(5)
    frozen_s = SESSION_TIMEOUT_MS / 1000 * 1.8
    await asyncio.to_thread(freeze, stack, "compactor", frozen_s)
    summary = await asyncio.to_thread(workload.join, 90)
    await asyncio.to_thread(stack.wait_ready, 180)
    report = await asyncio.to_thread(assert_zero_drift, stack, 180)
    compactor = stack.components["compactor"]
    assert compactor.alive and compactor.restarts == 0, compactor.tail()
    metrics = f"http://127.0.0.1:{stack.compactor_metrics_port}/metrics"
    lost = metric_value(metrics, "walduck_compactor_commits_lost_total")
    assert lost is not None, "the compactor does not publish walduck_compactor_commits_lost_total"
    # the stall really cost the session: either a refused commit or a second round of partition assignments
    # (restored from the deltas topic, or kept: nobody else took them meanwhile)
    text = compactor.log_path.read_text(errors="replace")
    restores = text.count("restored from") + text.count("kept across the rebalance")
    assert lost >= 1 or restores > 4, f"no rebalance seen after the freeze:\n{compactor.tail()}"
    print(
        f"[faults] compactor frozen {frozen_s:.1f} s (session {SESSION_TIMEOUT_MS} ms) commits={summary.commits} "
        f"commits_lost={lost:.0f} partition_restores={restores} datasets={report.datasets} rows_checked={report.rows_checked} drift=0"
    )
