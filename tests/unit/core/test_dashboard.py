"""k8s/grafana/walduck.json (issue 17): a provisionable dashboard whose every query is valid PromQL (promtool
parses each one) and reads only series walduck exports (every walduck_* name is in one of walduck.metrics' component registries),
covering what operators watch: slot, consumer lag, per-shard staleness, commit → queryable, apply latency,
DLQ by reason, rebuilds, request rate / 5xx / latency by route.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from walduck.metrics import REGISTRIES

DASHBOARD = Path(__file__).resolve().parents[3] / "k8s" / "grafana" / "walduck.json"
# Grafana's variables, as Prometheus would see them after interpolation
VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$namespace": "walduck", "$slot": "walduck"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def _panels() -> list[dict]:
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def _queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() if p["type"] != "row" for t in p["targets"]]


def _interpolate(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


def exported_series() -> set[str]:
    """Every sample name walduck's metrics can expose (families with no child yet included)."""
    names = set()
    for family in (f for registry in REGISTRIES.values() for f in registry.collect()):
        if not family.name.startswith("walduck_"):
            continue
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
    return names


def unknown_walduck_series(expr: str) -> set[str]:
    return set(re.findall(r"\bwalduck_[a-z0-9_]+", expr)) - exported_series()


def test_dashboard_is_provisionable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource", (
        "the Prometheus data source is chosen, not hard-coded"
    )
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in _panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (scripts/bootstrap.sh does)")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _interpolate(e)} for i, (_, e) in enumerate(_queries())
    ]
    (tmp_path / "dashboard.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]})
    )
    done = subprocess.run(
        [promtool, "check", "rules", "dashboard.rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_every_walduck_series_in_a_query_is_exported() -> None:
    bad = {
        title: sorted(unknown_walduck_series(expr))
        for title, expr in _queries()
        if unknown_walduck_series(expr)
    }
    assert not bad, bad


def test_the_series_check_catches_a_misspelt_name() -> None:
    assert unknown_walduck_series("rate(walduck_query_request_total[5m])") == {"walduck_query_request_total"}
    assert not unknown_walduck_series(
        "histogram_quantile(0.9, rate(walduck_query_duration_seconds_bucket[5m]))"
    )


def test_the_dashboard_shows_what_operators_watch() -> None:
    text = " ".join(expr for _, expr in _queries())
    for series in (
        "pg_replication_slot_slot_confirmed_flush_lsn",  # slot lag from PostgreSQL's own view
        "walduck_connector_replication_lag_bytes",
        "walduck_kafka_consumer_lag_records",
        "walduck_shard_staleness_seconds",
        "walduck_end_to_end_latency_seconds_bucket",  # commit → queryable
        "walduck_delta_apply_duration_seconds_bucket",
        "walduck_dlq_records_total",
        "walduck_rebuilds_total",
        "walduck_query_requests_total",
        "walduck_query_duration_seconds_bucket",
    ):
        assert series in text, series
    assert re.search(r"sum by \(component, reason\) \(rate\(walduck_dlq_records_total", text), "DLQ by reason"
    assert re.search(r'status=~"5\.\."', text), "5xx by route"
    assert re.search(r"max by \(shard\) \(walduck_shard_staleness_seconds", text), "staleness per shard"
