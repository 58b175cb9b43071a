"""Benchmark: 10k-partition dataset, 1% time-range query, plain view vs planner rewrite.

Run: python tests/integration/sinks_context/bench_prune.py [tmpdir]  (not collected by pytest)
"""

import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import DeltaFactory, settings_for  # noqa
from sinks.context.store import ContextStore
from walduck.timeutil import parse_iso
import sqlglot
from sinks.context.planner import plan

tmp = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/walduck-bench-prune")
shutil.rmtree(tmp, ignore_errors=True)
sink, wd = settings_for(tmp)
sink = sink.model_copy(update={"view_refresh_interval_s": 3600})
f = DeltaFactory(wd.storage_root)
N = 10_000
t = time.perf_counter()
files = [f.write_file("big", h, 5) for h in range(N)]
print("wrote files", time.perf_counter() - t)
store = ContextStore(sink, wd)
store.open()
off = 0
store.apply(f.create_dataset(0, "big"), 0, off)
t = time.perf_counter()
for i in range(0, N, 1000):
    off += 1
    store.apply(f.delta(0, "ds-big", upserts=files[i : i + 1000]), 0, off)
print("apply 10k partitions (10 deltas)", time.perf_counter() - t)
t = time.perf_counter()
store.refresh_views(force=True)
print("create view over 10k files", time.perf_counter() - t)
t = time.perf_counter()
off += 1
store.apply(f.delta(0, "ds-big", upserts=[f.write_file("big", N + 1, 5)]), 0, off)
print("one small apply", time.perf_counter() - t)
store.refresh_views(force=True)
lo = parse_iso(files[5000]["start_time"])
hi = lo + timedelta(hours=100)
q = f"SELECT count(*), sum(value) FROM timestore.big WHERE ts >= '{lo.replace(tzinfo=None).isoformat()}' AND ts < '{hi.replace(tzinfo=None).isoformat()}'"


def run(sql, n=5):
    best = 1e9
    for _ in range(n):
        t = time.perf_counter()
        with store.reader() as cur:
            r = cur.execute(sql).fetchall()
        best = min(best, time.perf_counter() - t)
    return best, r


plain, r1 = run(q)


def planned_run():
    t = time.perf_counter()
    p = plan(sqlglot.parse_one(q, read="duckdb"), store, {"ds-big"})
    with store.reader() as cur:
        r = cur.execute(p.sql, p.params).fetchall()
    return time.perf_counter() - t, r


best = min(planned_run()[0] for _ in range(5))
r2 = planned_run()[1]
print("plain view 1% range query", plain, r1)
print("planner 1% range query (incl. plan)", best, r2)
print("ratio", plain / best)
store.close()
