"""Configuration holes (issue 14, item 8): environments built from the settings model, misspelt variables
named at start, the metrics address configurable and set by k8s."""

from __future__ import annotations

import os
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


# --- one prefix per component, the older names kept as aliases (issue 14, item 8) ---

COMPONENT_PREFIXES = {
    "ConnectorSettings": "WALDUCK_CONNECTOR_",
    "CompactorSettings": "WALDUCK_COMPACTOR_",
    "SinkSettings": "WALDUCK_CONTEXT_",
    "QuerySettings": "WALDUCK_QUERY_",
    "JobSettings": "WALDUCK_JOBS_",
}
SHARED = {"WalduckSettings", "LogSettings"}  # what several components read: WALDUCK_<FIELD>


def _old_names() -> dict[str, dict[str, str]]:
    """Class -> field -> the variable that set it before the component prefixes (WALDUCK_<FIELD>, or what it was)."""
    from sinks.service.settings import _ALREADY_PREFIXED

    query_old = {"request_timeout_s": "WALDUCK_QUERY_TIMEOUT_S"}
    query_old |= {f: f"WALDUCK_QUERY_{f.upper()}" for f in _ALREADY_PREFIXED if f != "request_timeout_s"}
    old: dict[str, dict[str, str]] = {}
    for cls in settings_classes():
        if cls.__name__ in ("ConnectorSettings", "SinkSettings", "QuerySettings"):
            old[cls.__name__] = {
                f: query_old.get(f, f"WALDUCK_{f.upper()}")
                if cls.__name__ == "QuerySettings"
                else f"WALDUCK_{f.upper()}"
                for f in cls.model_fields
            }
    return old


def _classes() -> dict[str, type]:
    return {cls.__name__: cls for cls in settings_classes()}


def _value_for(cls: type, field: str) -> tuple[str, object] | None:
    """An environment value for ``field`` that differs from its default, and the value it parses to (``None``: an
    optional field without a path type, left unset)."""
    info = cls.model_fields[field]
    default = info.default
    annotation = str(info.annotation)
    if "Path" in annotation:
        return "/tmp/somewhere", Path("/tmp/somewhere")
    if default is None:
        return None
    if isinstance(default, bool):
        return ("false" if default else "true"), not default
    if isinstance(default, int):
        return str(default + 3), default + 3
    if isinstance(default, float):
        return str(default + 0.5), default + 0.5
    if isinstance(default, list):
        return '["/x"]', ["/x"]
    choices = getattr(info.annotation, "__args__", None) or list(
        getattr(info.annotation, "__members__", {}).values()
    )
    if choices:
        other = next(c for c in choices if c != default)
        return str(getattr(other, "value", other)), other
    return "something-else", "something-else"


@pytest.mark.parametrize("name", sorted(COMPONENT_PREFIXES))
def test_every_component_class_has_its_own_prefix(name: str) -> None:
    cls = _classes()[name]
    prefix = COMPONENT_PREFIXES[name]
    assert cls.model_config["env_prefix"] == prefix
    for field, names in env_names(cls).items():
        assert names[0].startswith(prefix), (
            field,
            names,
        )  # settings_env writes it under the component's prefix
    assert len(set(COMPONENT_PREFIXES.values())) == len(COMPONENT_PREFIXES)
    assert {c.__name__ for c in settings_classes()} == set(COMPONENT_PREFIXES) | SHARED


def test_no_variable_is_read_by_two_settings_classes() -> None:
    owner: dict[str, str] = {}
    for cls in settings_classes():
        for field, names in env_names(cls).items():
            for name in names:
                assert name not in owner, (name, owner.get(name), cls.__name__, field)
                owner[name] = cls.__name__


def test_component_overrides_name_real_fields() -> None:
    from walduck.config import component_aliases

    for cls in settings_classes():
        aliases = component_aliases(cls)
        if aliases is not None:
            assert aliases.fields() <= set(cls.model_fields), cls.__name__


@pytest.mark.parametrize("name", ["ConnectorSettings", "SinkSettings", "QuerySettings"])
def test_new_and_old_names_each_set_every_field(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = _classes()[name]
    old = _old_names()[name]
    for field, names in env_names(cls).items():
        value = _value_for(cls, field)
        assert value is not None, field
        raw, parsed = value
        assert old[field] in names, (field, names)  # the old name is kept
        for variable in dict.fromkeys([names[0], old[field]]):
            with monkeypatch.context() as m:
                m.setenv(variable, raw)
                assert getattr(cls(), field) == parsed, (field, variable)


def test_examples_of_new_names() -> None:
    from connectors.settings import ConnectorSettings
    from sinks.service.settings import QuerySettings
    from sinks.settings import SinkSettings

    assert env_names(ConnectorSettings)["heartbeat_interval"] == [
        "WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL",
        "WALDUCK_HEARTBEAT_INTERVAL",
    ]
    assert (
        env_names(ConnectorSettings)["debezium_topic_prefix"][0] == "WALDUCK_CONNECTOR_DEBEZIUM_TOPIC_PREFIX"
    )
    # no WALDUCK_CONTEXT_CONTEXT_PATH stutter
    assert env_names(SinkSettings)["context_path"] == ["WALDUCK_CONTEXT_PATH"]  # its name already
    assert env_names(SinkSettings)["sink_bootstrap"] == [
        "WALDUCK_CONTEXT_BOOTSTRAP",
        "WALDUCK_SINK_BOOTSTRAP",
    ]
    assert env_names(SinkSettings)["duckdb_memory_limit"] == [
        "WALDUCK_CONTEXT_DUCKDB_MEMORY_LIMIT",
        "WALDUCK_DUCKDB_MEMORY_LIMIT",
    ]
    # Timestore's own names stay accepted, after walduck's
    assert env_names(QuerySettings)["require_scope"] == [
        "WALDUCK_QUERY_REQUIRE_SCOPE",
        "WALDUCK_REQUIRE_SCOPE",
        "TIMESTORE_REQUIRE_SCOPE",
    ]
    # names that had the query prefix already are unchanged, with no new alias invented
    assert env_names(QuerySettings)["host"] == ["WALDUCK_QUERY_HOST"]
    assert env_names(QuerySettings)["request_timeout_s"] == ["WALDUCK_QUERY_TIMEOUT_S"]


def test_the_new_name_wins_over_the_old_one_and_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.settings import ConnectorSettings
    from sinks.service.settings import QuerySettings
    from walduck.config import shadowed_variables

    monkeypatch.setenv("WALDUCK_HEARTBEAT_INTERVAL", "7")
    monkeypatch.setenv("WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL", "3")
    monkeypatch.setenv("TIMESTORE_ADMIN_SCOPE", "ts:admin")
    monkeypatch.setenv("WALDUCK_ADMIN_SCOPE", "old:admin")
    assert ConnectorSettings().heartbeat_interval == 3.0
    assert QuerySettings().admin_scope == "old:admin"  # walduck's (old) name before Timestore's
    environ = {
        "WALDUCK_HEARTBEAT_INTERVAL": "7",
        "WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL": "3",
        "WALDUCK_STATUS_INTERVAL": "0.2",  # the same value under both names: nothing to say
        "WALDUCK_CONNECTOR_STATUS_INTERVAL": "0.2",
        "WALDUCK_SINK_BOOTSTRAP": "replay",  # alone: it is used
    }
    assert shadowed_variables(environ, settings_classes()) == [
        ("WALDUCK_HEARTBEAT_INTERVAL", "WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL")
    ]


def test_the_start_warning_names_a_shadowed_old_variable() -> None:
    import subprocess
    import sys

    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "WALDUCK_SINK_BOOTSTRAP": "replay",
        "WALDUCK_CONTEXT_BOOTSTRAP": "snapshot",
    }
    done = subprocess.run(
        [sys.executable, "-m", "stack.cli", "catalog", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "WALDUCK_SINK_BOOTSTRAP is ignored: WALDUCK_CONTEXT_BOOTSTRAP is set too" in done.stderr, (
        done.stderr
    )


def test_code_still_sets_fields_by_name() -> None:
    from connectors.settings import ConnectorSettings
    from sinks.service.settings import QuerySettings
    from sinks.settings import SinkSettings

    assert ConnectorSettings(heartbeat_interval=0.5, metrics_port=9).metrics_port == 9
    assert (
        SinkSettings(context_path=Path("/tmp/c.duckdb"), sink_bootstrap="replay").sink_bootstrap == "replay"
    )
    assert QuerySettings(host="0.0.0.0", request_timeout_s=2.0).request_timeout_s == 2.0


@pytest.mark.parametrize("name", sorted(COMPONENT_PREFIXES) + sorted(SHARED))
def test_settings_env_round_trips_through_the_new_names(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = _classes()[name]
    for variable in list(os.environ):
        if variable.upper().startswith(("WALDUCK_", "TIMESTORE_")):
            monkeypatch.delenv(variable)
    changed = {}
    for field in cls.model_fields:
        if name == "WalduckSettings" and field.startswith("kafka_"):
            continue  # validated together (walduck/config.py kafka_security_problems)
        value = _value_for(cls, field)
        if value is not None:
            changed[field] = value[1]
    original = cls(**changed)
    env = settings_env(original)
    names = env_names(cls)
    assert set(env) == {names[f][0] for f in cls.model_fields if getattr(original, f) is not None}
    prefix = COMPONENT_PREFIXES.get(name, "WALDUCK_")
    assert all(variable.startswith(prefix) for variable in env)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert cls() == original


def test_unknown_variables_accepts_old_and_new_names_and_flags_misspellings() -> None:
    environ = {
        "WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL": "1",
        "WALDUCK_HEARTBEAT_INTERVAL": "1",
        "WALDUCK_CONTEXT_PATH": "/x",
        "WALDUCK_CONTEXT_DUCKDB_THREADS": "2",
        "WALDUCK_DUCKDB_THREADS": "2",
        "WALDUCK_QUERY_IAM_OPEN": "true",
        "WALDUCK_IAM_OPEN": "true",
        "TIMESTORE_SQL_READ_SCOPE": "x",
        "WALDUCK_CONNECTOR_HEARTBEAT_INTERVALL": "1",  # misspelt new name
        "WALDUCK_CONTEXT_DUCKDB_THREDS": "1",
        "WALDUCK_HEARTBEAT_INTERVALL": "1",  # misspelt old name
    }
    found = dict(unknown_variables(environ, settings_classes(), DIRECT_VARIABLES))
    assert found == {
        "WALDUCK_CONNECTOR_HEARTBEAT_INTERVALL": "WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL",
        "WALDUCK_CONTEXT_DUCKDB_THREDS": "WALDUCK_CONTEXT_DUCKDB_THREADS",
        "WALDUCK_HEARTBEAT_INTERVALL": "WALDUCK_HEARTBEAT_INTERVAL",
    }


def test_an_override_replaces_a_setting_under_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.envnames import override_env

    base = {"WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL": "1", "WALDUCK_IAM_OPEN": "true", "OTHER": "x"}
    merged = override_env(base, {"WALDUCK_HEARTBEAT_INTERVAL": "0.3", "WALDUCK_QUERY_IAM_OPEN": "false"})
    assert merged == {"WALDUCK_HEARTBEAT_INTERVAL": "0.3", "WALDUCK_QUERY_IAM_OPEN": "false", "OTHER": "x"}
    monkeypatch.setenv("WALDUCK_CONTEXT_BOOTSTRAP", "snapshot")  # inherited; the extra (old name) must win
    env = component_env(WalduckSettings(), WALDUCK_SINK_BOOTSTRAP="replay")
    assert "WALDUCK_CONTEXT_BOOTSTRAP" not in env and env["WALDUCK_SINK_BOOTSTRAP"] == "replay"


def test_a_field_with_its_own_alias_keeps_it() -> None:
    from pydantic import AliasChoices, Field
    from pydantic_settings import BaseSettings

    from walduck.config import component_config

    class Example(BaseSettings):
        model_config = component_config(
            "WALDUCK_EXAMPLE_", names={"b": "WALDUCK_EXAMPLE_BEE"}, legacy={"c": None}
        )

        a: int = 0
        b: int = 0
        c: int = 0
        d: int = Field(0, validation_alias=AliasChoices("OWN_D", "WALDUCK_D"))

    assert env_names(Example) == {
        "a": ["WALDUCK_EXAMPLE_A", "WALDUCK_A"],
        "b": ["WALDUCK_EXAMPLE_BEE", "WALDUCK_B"],
        "c": ["WALDUCK_EXAMPLE_C"],
        "d": ["OWN_D", "WALDUCK_D"],
    }
