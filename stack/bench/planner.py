"""``walduck bench planner``: request received -> DuckDB starts executing, on a 10k-partition dataset.

Measured in-process around what the query service does before handing SQL to DuckDB (policy parse, dataset
list for IAM, plan, execution guard, reader cursor), with deltas to the same dataset applied concurrently by
a writer thread (as the service's consumer does). Baseline in the same run: the same query on the idle context.
"""

from __future__ import annotations

import threading
import time

from stack.bench.contexts import DeltaMaker
from stack.bench.dataset import BigDataset, big_dataset
from stack.bench.env import BenchServices, scenario_env
from stack.bench.report import Result, percentile

GOAL_P99_S = 0.020


def _measure(big: BigDataset, sql: str, count: int, pause_s: float) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        planned = big.plan_only(sql)
        with big.store.reader() as cur:
            times.append(time.perf_counter() - started)
            cur.execute(planned.sql, planned.params).fetchall()
        time.sleep(pause_s)
    return times


def run_planner(
    services: BenchServices, partitions: int, requests: int, delta_rate: float, delta_changes: int
) -> Result:
    result = Result(
        "planner",
        {
            "partitions": partitions,
            "requests": requests,
            "delta_rate_per_s": delta_rate,
            "changes_per_delta": delta_changes,
        },
    )
    with scenario_env(services, "planner") as env, big_dataset(env, partitions) as big:
        sql = big.range_sql()
        _measure(big, sql, 5, 0)  # warm-up
        idle = _measure(big, sql, requests, 0.005)
        maker = DeltaMaker(big.store, env.settings.topic_partitions)
        stop = threading.Event()
        applied: list[float] = []

        def writer() -> None:
            interval = 1.0 / delta_rate
            next_at = time.monotonic()
            while not stop.is_set():
                delta, shard = maker.make(big.view.id, delta_changes)
                applied.append(maker.apply(delta, shard))
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))

        thread = threading.Thread(target=writer, name="bench-deltas", daemon=True)
        thread.start()
        busy_started = time.monotonic()
        try:
            busy = _measure(big, sql, requests, 0.005)
        finally:
            busy_s = time.monotonic() - busy_started
            stop.set()
            thread.join(timeout=30)
        result.series["idle_s"] = idle
        result.series["busy_s"] = busy
        for pct in (50, 99):
            b, i = percentile(busy, pct), percentile(idle, pct)
            result.add(
                f"plan p{pct} while deltas arrive",
                b * 1000,
                "ms",
                i * 1000,
                goal="< 20 ms" if pct == 99 else "",
                ok=(b < GOAL_P99_S) if pct == 99 else None,
            )
        result.add("plan max while deltas arrive", max(busy) * 1000, "ms", max(idle) * 1000)
        result.add(
            f"deltas/s applied while measuring ({delta_changes} changes each)",
            len(applied) / busy_s,
            "/s",
            goal=f"offered {delta_rate:g}/s",
        )
        if applied:
            result.add("apply p50 during the busy phase", percentile(applied, 50) * 1000, "ms")
        result.notes.append(
            "baseline column = same query on the idle context; measured in-process (parse + dataset list +"
            " plan + reader cursor), the span the service's walduck_query_planning_seconds covers minus HTTP"
        )

    def draw(ax: object) -> None:
        ax.hist([x * 1000 for x in idle], bins=40, alpha=0.6, label="idle")  # type: ignore[attr-defined]
        ax.hist([x * 1000 for x in busy], bins=40, alpha=0.6, label="deltas arriving")  # type: ignore[attr-defined]
        ax.axvline(GOAL_P99_S * 1000, color="red", linestyle="--", label="goal p99")  # type: ignore[attr-defined]
        ax.set_xlabel("request -> DuckDB executing (ms)")  # type: ignore[attr-defined]
        ax.legend()  # type: ignore[attr-defined]

    result.plot("latency", draw)
    return result
