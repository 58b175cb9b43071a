"""``walduck bench apply``: one delta of 1 / 100 / 1,000 partition changes applied to a big context.

Baseline in the same run: a Timestore-style full rebuild of that context from PostgreSQL
(``ContextStore.rebuild()``), which is what a cache without deltas does on every change.
"""

from __future__ import annotations

import random

from stack.bench.contexts import DeltaMaker, open_store, timed
from stack.bench.env import BenchServices, scenario_env
from stack.bench.report import Result, percentile
from walduck.gctuning import tune_for_streaming

SIZES = (1, 100, 1000)
GOAL_P99_S = 0.100


def run_apply(services: BenchServices, partitions: int, datasets: int, repeats: int, rebuilds: int) -> Result:
    result = Result(
        "apply",
        {"partitions": partitions, "datasets": datasets, "repeats_per_size": repeats, "rebuilds": rebuilds},
    )
    with scenario_env(services, "apply") as env:
        load = env.bulk_load(datasets=datasets, partitions=partitions, files="synthetic")
        result.notes.append(
            f"catalog: {load.partitions:,} partitions over {load.datasets} datasets bulk-loaded in "
            f"{load.elapsed_s:.1f} s (files='synthetic': paths only, catalog-only benchmark)"
        )
        store = open_store(env)
        try:
            rebuild_s = []
            for _ in range(rebuilds):
                elapsed, _ = timed(store.rebuild, None, "bench")
                rebuild_s.append(elapsed)
            with store.reader() as cur:
                held = cur.execute("SELECT count(*) FROM wd.partitions").fetchone()[0]
            result.notes.append(f"context holds {held:,} partitions after rebuild")
            maker = DeltaMaker(store, env.settings.topic_partitions)
            tune_for_streaming()  # as the query service runs its applies (walduck/gctuning.py)
            ids = [d.id for d in store.datasets()]
            rng = random.Random(7)
            # warm-up: one delta per size (first touch of DuckDB's index pages)
            for size in SIZES:
                maker.apply(*maker.make(rng.choice(ids), size))
            rebuild_p50 = percentile(rebuild_s, 50)
            # latencies of the applies whose commit ran DuckDB's checkpoint (the WAL file shrank across them)
            in_apply_checkpoints: list[float] = []
            for size in SIZES:
                samples = []
                txn_ms = []
                for _ in range(repeats):
                    delta, shard = maker.make(rng.choice(ids), size)
                    wal = store.wal_bytes()
                    samples.append(maker.apply(delta, shard))
                    if store.wal_bytes() < wal:
                        in_apply_checkpoints.append(samples[-1])
                    txn_ms.append(store.progress()[shard].last_apply_ms or 0.0)
                p50, p99 = percentile(samples, 50), percentile(samples, 99)
                result.series[f"apply_{size}_s"] = samples
                result.add(f"apply {size} changes p50", p50 * 1000, "ms", rebuild_p50 * 1000)
                result.add(
                    f"apply {size} changes p99",
                    p99 * 1000,
                    "ms",
                    rebuild_p50 * 1000,
                    goal="< 100 ms" if size == 1000 else "",
                    ok=(p99 < GOAL_P99_S) if size == 1000 else None,
                )
                result.add(f"apply {size} changes: DuckDB txn p99", percentile(txn_ms, 99), "ms")
            # the checkpoint the applies above did not pay: what the idle deltas consumer runs (store.checkpoint)
            wal_left = store.wal_bytes()
            idle_s, _ = timed(store.checkpoint)
            result.add("applies that ran DuckDB's checkpoint at commit", len(in_apply_checkpoints), "")
            if in_apply_checkpoints:
                result.add(
                    "  their latency (mean)",
                    sum(in_apply_checkpoints) / len(in_apply_checkpoints) * 1000,
                    "ms",
                )
            result.add(
                f"idle checkpoint after the run ({wal_left / 2**20:.1f} MiB of WAL)", idle_s * 1000, "ms"
            )
            result.add("full rebuild from PostgreSQL (baseline) p50", rebuild_p50, "s")
            result.series["rebuild_s"] = rebuild_s
            result.notes.append(
                "apply = ContextStore.apply() as the deltas consumer calls it (DuckDB transaction + "
                "progress + plain-view refresh when due, default view_refresh_interval_s=1); "
                "'DuckDB txn' = the transaction alone; baseline column = full rebuild in ms; DuckDB checkpoints "
                f"at the commit that takes its WAL past {store.settings.duckdb_checkpoint_threshold} "
                "(WALDUCK_CONTEXT_DUCKDB_CHECKPOINT_THRESHOLD); the query service's deltas consumer checkpoints when idle, "
                "timed on the 'idle checkpoint' row"
            )
        finally:
            store.close()

    def draw(ax: object) -> None:
        data = [[s * 1000 for s in result.series[f"apply_{n}_s"]] for n in SIZES]
        ax.boxplot(data)  # type: ignore[attr-defined]
        ax.set_xticks(range(1, len(SIZES) + 1), [f"{n} changes" for n in SIZES])  # type: ignore[attr-defined]
        ax.axhline(GOAL_P99_S * 1000, color="red", linestyle="--", label="goal p99 @1,000")  # type: ignore[attr-defined]
        ax.set_ylabel("apply latency (ms)")  # type: ignore[attr-defined]
        ax.set_title(  # type: ignore[attr-defined]
            f"delta apply, {partitions:,}-partition context (full rebuild: {rebuild_p50:.1f} s)"
        )
        ax.legend()  # type: ignore[attr-defined]

    result.plot("latency", draw)
    return result
