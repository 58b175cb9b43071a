"""A component waiting for a topic that does not exist yet (issue 17): it says so once per interval, not on
every metadata poll (the connector logged ~10 ERROR lines/s), is not ready, and SIGINT stops it (it took
~30 s). Real processes on the session's Kafka; the topics are named but never created."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest

from stack.procs import wait_until

pytestmark = pytest.mark.integration

WATCH_S = 8.0  # how long each component waits for its topic before the count


async def test_missing_topic_logs_once_per_interval_and_sigint_stops(make_stack) -> None:
    stack = await make_stack(partitions=1)
    missing = f"walduck.missing-{uuid.uuid4().hex[:8]}"
    topic_variable = {
        "connector": "WALDUCK_CHANGES_TOPIC",
        "compactor": "WALDUCK_CHANGES_TOPIC",
        "query": "WALDUCK_DELTAS_TOPIC",
    }
    for name, variable in topic_variable.items():
        comp = stack._component(name)
        comp.env[variable] = missing
        stack.components[name] = comp
        comp.start()

    def mentions(name: str) -> list[str]:
        return [ln for ln in stack.components[name].tail(10_000).splitlines() if missing in ln]

    for name in ("connector", "query"):
        await asyncio.to_thread(
            wait_until, lambda n=name: bool(mentions(n)), 60, 0.2, f"{name} naming {missing}"
        )
    await asyncio.sleep(2)  # start-up lines (subscribing, joining the group) are not the flood
    before = {name: len(mentions(name)) for name in topic_variable}
    await asyncio.sleep(WATCH_S)
    counts = {name: len(mentions(name)) - before[name] for name in topic_variable}
    print("lines naming the missing topic over", WATCH_S, "s:", counts)
    for name, count in counts.items():
        # once per 10 s interval (walduck/logs.py RepeatFilter): at most one line in an 8 s window, + 1 for a boundary
        assert count <= 2, f"{name} logged {count} lines about {missing}:\n{stack.components[name].tail(20)}"
    async with httpx.AsyncClient(timeout=5) as client:
        ready = await client.get(f"http://127.0.0.1:{stack.connector_metrics_port}/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["replicationStreaming"] is False

    stopped = {}
    for name, comp in stack.components.items():
        assert comp.alive, f"{name} exited while waiting for its topic:\n{comp.tail(20)}"
        started = time.monotonic()
        comp.proc.send_signal(signal.SIGINT)
        comp.proc.wait(timeout=10)
        stopped[name] = round(time.monotonic() - started, 2)
    print("stopped after SIGINT (s):", stopped)
