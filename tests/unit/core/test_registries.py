"""One registry per process (issue 17): each component's /metrics lists its own walduck series, process/platform
collectors and walduck_build_info, nothing another component updates (the compactor exported
``walduck_connector_replication_lag_bytes 0``); and every metric a package updates is in its component's
registry (or it would never be scraped)."""

from __future__ import annotations

import ast
import re
import urllib.request
from pathlib import Path

import pytest

from walduck import metrics
from walduck.health import Health

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = {"connector": "connectors", "compactor": "pipeline", "query": "sinks"}
METRIC_NAMES = {name for name, value in vars(metrics).items() if name.isupper() and hasattr(value, "_name")}


def _used_metrics(package: str) -> set[str]:
    """Names of walduck.metrics objects a package's modules import or read as ``metrics.X`` / ``m.X``."""
    used = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "walduck.metrics":
                used |= {a.name for a in node.names if a.name in METRIC_NAMES}
            elif isinstance(node, ast.Attribute) and node.attr in METRIC_NAMES:
                used.add(node.attr)
    return used


def _families(text: str) -> set[str]:
    """Metric names of a text-format scrape (``_total`` dropped; a counter's ``_created`` gauge folded into it)."""
    names = set(re.findall(r"^# TYPE ([a-z0-9_]+) ", text, re.M))
    return {n.removesuffix("_total") for n in names if not n.endswith("_created")}


def _own_families(component: str) -> set[str]:
    names = {getattr(metrics, n)._name for n in _used_metrics(PACKAGES[component])}
    return names | {"walduck_build_info"}


@pytest.mark.parametrize("component", sorted(PACKAGES))
def test_each_metric_a_package_updates_is_in_its_registry(component: str) -> None:
    used = _used_metrics(PACKAGES[component])
    assert used, component
    registered = {id(c) for c in metrics.COMPONENT_METRICS[component]}
    missing = sorted(n for n in used if id(getattr(metrics, n)) not in registered)
    assert not missing, f"{component} updates {missing} but its registry does not export them"


@pytest.mark.parametrize("component", ["connector", "compactor"])
def test_metrics_port_serves_only_the_components_series(component: str) -> None:
    server = metrics.serve_metrics(component, 0, "127.0.0.1", Health(component))
    try:
        port = server.server_address[1]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    walduck = {f for f in _families(text) if f.startswith("walduck_")}
    assert walduck == _own_families(component), sorted(walduck ^ _own_families(component))
    others = {f for f in _families(text) if not f.startswith("walduck_")}
    assert others and all(f.startswith(("process_", "python_")) for f in others), sorted(others)


def test_query_registry_holds_only_the_query_process_series() -> None:
    from prometheus_client import generate_latest

    walduck = {
        f
        for f in _families(generate_latest(metrics.REGISTRIES["query"]).decode())
        if f.startswith("walduck_")
    }
    assert walduck == _own_families("query"), sorted(walduck ^ _own_families("query"))
    assert not any(f.startswith(("walduck_connector_", "walduck_compactor_")) for f in walduck)


def test_every_metric_belongs_to_a_component() -> None:
    registered = {id(c) for cs in metrics.COMPONENT_METRICS.values() for c in cs} | {id(metrics.BUILD_INFO)}
    orphans = sorted(n for n in METRIC_NAMES if id(getattr(metrics, n)) not in registered)
    assert not orphans, f"defined but exported by no component: {orphans}"
