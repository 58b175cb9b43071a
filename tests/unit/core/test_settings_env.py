"""Configuration holes (issue 14, item 8): environments built from the settings model, misspelt variables
named at start, the metrics address configurable and set by k8s."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stack.cli import DIRECT_VARIABLES, settings_classes
from stack.procs import component_env
from walduck.config import ContextMode, WalduckSettings, env_names, settings_env, unknown_variables

ROOT = Path(__file__).resolve().parents[3]


def test_settings_env_recreates_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    original = WalduckSettings(
        data_dir=Path("/tmp/x"),
        pg_dsn="postgresql://a@b/c",
        max_message_bytes=12345,
        topic_partitions=7,
        context_mode=ContextMode.FULL_SCAN,
        metrics_host="0.0.0.0",
    )
    for name, value in settings_env(original).items():
        monkeypatch.setenv(name, value)
    assert WalduckSettings() == original


def test_component_env_carries_max_message_bytes_and_never_the_admin_dsn() -> None:
    env = component_env(WalduckSettings(max_message_bytes=999, pg_admin_dsn="postgresql://owner@x/y"))
    assert env["WALDUCK_MAX_MESSAGE_BYTES"] == "999"  # the hand-written copy missed it
    assert env["WALDUCK_PG_ADMIN_DSN"] == ""


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    environ = {
        "WALDUCK_CONTXT_MODE": "full-scan",  # misspelt
        "WALDUCK_METRICS_PORT": "9101",  # the connector's
        "WALDUCK_COMPACTOR_FLUSH_INTERVAL_MS": "5",
        "WALDUCK_QUERY_PORT": "8080",
        "WALDUCK_TEST_KEEP": "1",  # a prefix read by the test suite
        "WALDUCK_NOPE": "1",
        "PATH": "/bin",
    }
    found = dict(unknown_variables(environ, settings_classes(), DIRECT_VARIABLES))
    assert found == {"WALDUCK_CONTXT_MODE": "WALDUCK_CONTEXT_MODE", "WALDUCK_NOPE": None}


def test_every_k8s_configmap_variable_is_read_by_some_component() -> None:
    data: dict[str, str] = {}
    for doc in yaml.safe_load_all((ROOT / "k8s" / "configmap.yaml").read_text()):
        if doc and doc.get("kind") == "ConfigMap":
            data.update(doc.get("data") or {})
    assert "WALDUCK_METRICS_HOST" in data  # Prometheus must reach the connector's and compactor's /metrics
    assert unknown_variables(data, settings_classes(), DIRECT_VARIABLES) == []


def test_the_connector_metrics_port_has_a_component_prefix_and_keeps_its_old_name() -> None:
    from connectors.settings import ConnectorSettings

    assert env_names(ConnectorSettings)["metrics_port"] == [
        "WALDUCK_CONNECTOR_METRICS_PORT",
        "WALDUCK_METRICS_PORT",
    ]
    environ = {"WALDUCK_CONNECTOR_METRICS_PORT": "9101", "WALDUCK_METRICS_PORT": "9109"}
    assert unknown_variables(environ, settings_classes(), DIRECT_VARIABLES) == []
