"""``walduck bench freshness``: source commit -> visible through ``/sql/read``, at a sustained commit rate.

The workload commits at ``rate`` catalog commits/s; after a commit (sampled at most ``samples_per_s`` times
a second) a client immediately asks ``/sql/read`` with ``min_lsn`` = that commit's WAL end: the service
answers once its contexts applied it, so answer time - commit time = commit -> visible (plus one local
HTTP round trip, measured separately as the idle ``SELECT 1`` time).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from walduck.bench.env import BenchServices, scenario_env
from walduck.bench.pipeline import SCOPES, make_stack
from walduck.bench.report import Result, percentile
from walduck.workload.generator import RunSummary, Workload


def run_freshness(services: BenchServices, rate: float, duration: float, samples_per_s: float) -> Result:
    result = Result("freshness", {"rate": rate, "duration_s": duration, "samples_per_s": samples_per_s})
    with scenario_env(services, "freshness", topics=True) as env:
        stack = make_stack(env)
        try:
            stack.start()
            stack.wait_ready(120)
            stack.wait_caught_up(None, 120)
            rtt = []
            for _ in range(20):
                started = time.perf_counter()
                stack.read("SELECT 1 AS ok", scopes=SCOPES)
                rtt.append(time.perf_counter() - started)
            points: list[tuple[float, float, int]] = []  # (seconds into run, latency, status)
            lock = threading.Lock()
            pool = ThreadPoolExecutor(max_workers=16)
            run_started = time.monotonic()
            last = [0.0]

            def probe(lsn: int, committed: float) -> None:
                try:
                    resp = stack.read("SELECT 1 AS ok", min_lsn=lsn, scopes=SCOPES, timeout=30)
                    status = resp.status_code
                except Exception:
                    status = 0
                with lock:
                    points.append((committed - run_started, time.monotonic() - committed, status))

            def on_progress(summary: RunSummary) -> None:
                now = time.monotonic()
                if summary.last_lsn and now - last[0] >= 1.0 / samples_per_s:
                    last[0] = now
                    pool.submit(probe, summary.last_lsn, now)

            with Workload(env.dsn, env.settings.catalog_schema, env.settings.storage_root, seed=11) as wl:
                summary = wl.run(datasets=5, rate=rate, duration=duration, on_progress=on_progress)
            pool.shutdown(wait=True)
        finally:
            stack.stop()
    ok = [lat for _, lat, status in points if status == 200]
    failed = len(points) - len(ok)
    p50, p99 = percentile(ok, 50), percentile(ok, 99)
    achieved = summary.commits / summary.elapsed_s if summary.elapsed_s else 0.0
    result.add(
        "catalog commits/s achieved", achieved, "/s", goal=f"{rate:g}/s offered", ok=achieved >= 0.95 * rate
    )
    result.add("commit -> visible p50", p50 * 1000, "ms", goal="< 250 ms", ok=p50 < 0.25)
    result.add("commit -> visible p99", p99 * 1000, "ms", goal="< 1 s", ok=p99 < 1.0)
    result.add("commit -> visible max", max(ok) * 1000 if ok else float("nan"), "ms")
    result.add("probes not answered 200 (timeouts/errors)", failed, "", goal="0", ok=failed == 0)
    result.add("local HTTP round trip (SELECT 1, idle) p50", percentile(rtt, 50) * 1000, "ms")
    result.series["points"] = points
    result.notes.append(
        f"{summary.commits} commits in {summary.elapsed_s:.1f} s; {len(points)} probes; operations {summary.operations}"
    )

    def draw(ax: object) -> None:
        xs = [p[0] for p in points if p[2] == 200]
        ys = [p[1] * 1000 for p in points if p[2] == 200]
        ax.plot(xs, ys, ".", markersize=3)  # type: ignore[attr-defined]
        ax.axhline(250, color="orange", linestyle="--", label="p50 goal")  # type: ignore[attr-defined]
        ax.axhline(1000, color="red", linestyle="--", label="p99 goal")  # type: ignore[attr-defined]
        ax.set_xlabel("seconds into the run")  # type: ignore[attr-defined]
        ax.set_ylabel("commit -> visible (ms)")  # type: ignore[attr-defined]
        ax.set_title(f"freshness at {achieved:.0f} commits/s (offered {rate:g})")  # type: ignore[attr-defined]
        ax.legend()  # type: ignore[attr-defined]

    result.plot("timeseries", draw)
    return result
