"""``walduck bench query``: a 1% time-range query and a full-dataset aggregate on a 10k-partition dataset.

Baseline in the same process: a plain DuckDB view ``read_parquet([every file of the dataset])`` on its own
in-memory DuckDB, queried with the same SQL. walduck's figure includes parsing and planning. The two sides'
samples alternate (walduck, plain, walduck, …) so that load from other work on a shared machine falls on both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import duckdb

from sinks.context.naming import quote_ident, quote_literal
from stack.bench.dataset import big_dataset
from stack.bench.env import BenchServices, scenario_env
from stack.bench.report import Result, percentile


def _samples(
    fns: tuple[Callable[[], object], Callable[[], object]], repeats: int
) -> tuple[tuple[list[float], object], tuple[list[float], object]]:
    """``repeats`` timed calls of each function, alternating between them, after one warm-up call of each
    (file metadata cache, first bind); the times and the last result of each."""
    outs = [fn() for fn in fns]
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - started)
    return (times[0], outs[0]), (times[1], outs[1])


def _same(a: object, b: object) -> bool:
    """Equal rows, floats compared with a relative tolerance (sums depend on file order)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def run_query(services: BenchServices, partitions: int, repeats: int) -> Result:
    result = Result("query", {"partitions": partitions, "repeats": repeats})
    with scenario_env(services, "query") as env, big_dataset(env, partitions) as big:
        result.notes.append(
            f"dataset: {big.partitions:,} partitions (real Parquet, hard-linked shared files) loaded in "
            f"{big.load_s:.1f} s; context rebuilt in {big.rebuild_s:.1f} s"
        )
        plain = duckdb.connect(config={"threads": big.store.settings.duckdb_threads})
        files = ", ".join(quote_literal(p) for p in big.locations())
        plain.execute("CREATE SCHEMA timestore")
        plain.execute(
            f"CREATE VIEW timestore.{quote_ident(big.view.view_name)} AS SELECT * FROM read_parquet([{files}])"
        )
        try:
            for label, sql, goal, check in (
                ("1% time-range query", big.range_sql(), "≥ 5× faster", lambda r: r >= 5.0),
                ("full-dataset aggregate", big.aggregate_sql(), "≤ 1.2× plain", lambda r: r <= 1.2),
            ):
                (ours, ours_rows), (base, base_rows) = _samples(
                    (lambda sql=sql: big.walduck_query(sql), lambda sql=sql: plain.execute(sql).fetchall()),
                    repeats,
                )
                if not _same(ours_rows, base_rows):
                    result.notes.append(
                        f"RESULT MISMATCH for {label}: walduck {ours_rows} vs plain {base_rows}"
                    )
                else:
                    result.notes.append(
                        f"{label}: result {ours_rows[0] if ours_rows else None} (same as plain)"
                    )
                o50, b50 = percentile(ours, 50), percentile(base, 50)
                speedup = b50 / o50 if o50 else float("nan")
                key = "range" if "range" in label else "aggregate"
                result.series[f"{key}_walduck_s"] = ours
                result.series[f"{key}_plain_s"] = base
                result.add(f"{label} p50 (walduck, incl. plan)", o50 * 1000, "ms", b50 * 1000)
                if key == "range":
                    result.add(
                        f"{label}: speed-up over plain view", speedup, "×", goal=goal, ok=check(speedup)
                    )
                else:
                    slowdown = o50 / b50 if b50 else float("nan")
                    result.add(f"{label}: time vs plain view", slowdown, "×", goal=goal, ok=check(slowdown))
            with big.store.reader() as cur:
                row = cur.execute(
                    "SELECT sum(memory_usage_bytes) FROM duckdb_memory() WHERE tag = 'OBJECT_CACHE'"
                ).fetchone()
            result.notes.append(
                f"walduck's DuckDB object cache (Parquet footers, parquet_metadata_cache="
                f"{big.store.settings.duckdb_parquet_metadata_cache}) after the run: {(row[0] or 0) / 2**20:.1f} MiB"
                f" for {big.partitions:,} files; the plain view runs with DuckDB's defaults (no footer cache)"
            )
        finally:
            plain.close()
    return result
