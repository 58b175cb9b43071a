"""`walduck bench all --quick` on the session's real PostgreSQL + Kafka: every scenario writes its JSON."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stack.services.manager import ServiceEndpoints

SCENARIOS = (
    "connector",
    "freshness",
    "apply",
    "bootstrap",
    "planner",
    "query",
    "hit-ratio",
    "memory",
    "failover",
)


@pytest.mark.integration
def test_bench_all_quick_writes_every_scenario(services: ServiceEndpoints, fresh_db, tmp_path: Path) -> None:
    dsn = fresh_db()  # the bench creates one database per scenario on this server; this one proves access
    assert dsn
    out = tmp_path / "results"
    env = {
        **os.environ,
        "WALDUCK_PG_DSN": services.pg_dsn,
        "WALDUCK_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "WALDUCK_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("WALDUCK_BENCH_KEEP", None)
    done = subprocess.run(
        [sys.executable, "-m", "stack.cli", "bench", "all", "--quick", "--out", str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,  # failover adds ~40 s
    )
    assert done.returncode == 0, f"bench all crashed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    for name in SCENARIOS:
        path = out / f"{name}.json"
        assert path.exists(), f"{name}.json missing:\n{done.stdout[-4000:]}"
        doc = orjson.loads(path.read_bytes())
        assert doc["scenario"] == name
        assert doc["params"]["quick"] is True
        assert doc["machine"]["cpus"] and doc["machine"]["versions"]["duckdb"]
        assert doc["rows"], f"{name}: no rows"
        for row in doc["rows"]:
            assert {"metric", "value", "unit", "baseline", "goal", "ok", "ratio"} <= set(row)
        # every scenario that has a goal reports whether it met it (a miss is fine, a missing verdict is not)
        assert any(row["goal"] and row["ok"] is not None for row in doc["rows"]), name
    # figures are measured, not constants: timings are positive numbers
    apply_doc = orjson.loads((out / "apply.json").read_bytes())
    p99 = next(r for r in apply_doc["rows"] if r["metric"] == "apply 1000 changes p99")
    assert isinstance(p99["value"], float) and p99["value"] > 0 and p99["baseline"] > 0
    assert len(apply_doc["series"]["apply_1000_s"]) >= 10
    connector = {r["metric"]: r["value"] for r in orjson.loads((out / "connector.json").read_bytes())["rows"]}
    # Debezium ran on the same WAL: the same row changes (walduck's topic adds heartbeats/watermarks)
    assert 0 < connector["Debezium row-change records in Kafka"] <= connector["change records in Kafka"]
    assert connector["Debezium streaming time"] > 0
    fresh = orjson.loads((out / "freshness.json").read_bytes())
    assert fresh["series"]["points"], "freshness took no samples"
    failover = orjson.loads((out / "failover.json").read_bytes())
    assert [e["component"] for e in failover["series"]["events"]] == ["connector", "compactor", "query"]
    assert all(e["recovered_s"] is not None and e["recovered_s"] > 0 for e in failover["series"]["events"])
    drift = next(r for r in failover["rows"] if r["metric"] == "Parquet recount mismatches")
    assert drift["value"] == 0 and drift["ok"] is True
    # the databases the bench made are gone again
    import psycopg

    with psycopg.connect(services.pg_dsn, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'wdbench_%'").fetchone()
    assert left is not None and left[0] == 0
