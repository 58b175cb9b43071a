"""Which settings classes read the environment (every component's), and the ``WALDUCK_*`` variables read outside
them: what ``walduck`` checks the environment against at start, and what merges of environments go by."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic_settings import BaseSettings

from walduck.config import merge_env

# WALDUCK_* variables read outside the settings classes (typer envvars, local services, the test suite)
DIRECT_VARIABLES = (
    "WALDUCK_VERIFY_SCOPES",
    "WALDUCK_BENCH_KEEP",
    "WALDUCK_CACHE_DIR",
    "WALDUCK_KAFKA_CDS",
    "WALDUCK_PG_BIN",
    "WALDUCK_TEST_",  # a trailing "_": a prefix (tests/conftest.py, the faust evaluation)
    "WALDUCK_FAUST_",
)


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of every component: one environment (a k8s ConfigMap, ``walduck up``) carries all."""
    from connectors.settings import ConnectorSettings
    from pipeline.settings import CompactorSettings
    from sinks.service.jobs.settings import JobSettings
    from sinks.service.settings import QuerySettings
    from sinks.settings import SinkSettings
    from walduck.config import LogSettings, WalduckSettings

    return [
        WalduckSettings,
        LogSettings,
        ConnectorSettings,
        CompactorSettings,
        SinkSettings,
        QuerySettings,
        JobSettings,
    ]


def override_env(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """``base`` with ``overrides`` on top, whichever name (new or old) each side uses for a setting
    (:func:`walduck.config.merge_env`)."""
    return merge_env(base, overrides, settings_classes())
