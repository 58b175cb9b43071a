"""Shared configuration (pydantic-settings, ``WALDUCK_`` environment variables).

Component-specific knobs live next to their component (``connectors/settings.py``,
``pipeline/settings.py``, ``sinks/settings.py``) and use the same prefix; this module
holds what several components must agree on: where the services are, the catalog schema,
topic names and the data directory.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ContextMode(StrEnum):
    INCREMENTAL = "incremental"
    FULL_SCAN = "full-scan"


class WalduckSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALDUCK_", extra="ignore")

    # where everything local lives (PostgreSQL data dir, Kafka logs, DuckDB contexts, Parquet files)
    data_dir: Path = Path(".walduck")
    # external services; empty = the local ones `walduck services start` runs
    # PostgreSQL, one DSN per role (docs/security.md "Roles"; created by `walduck catalog roles`):
    # pg_dsn is the connector's (walduck_connector: REPLICATION + SELECT on the published tables), and the
    # fallback of the others when they are unset (a single-DSN deployment keeps working)
    pg_dsn: str = ""
    # setup only (migrations, `connector setup`, `catalog roles`): the catalog owner or a superuser
    pg_admin_dsn: str = ""
    # the query service's catalog reads (walduck_reader)
    pg_read_dsn: str = ""
    # the query service's /sql/exec (walduck_exec; refused on a privileged role unless allowed)
    pg_exec_dsn: str = ""
    kafka_bootstrap: str = ""
    # the Timestore catalog schema (TIMESTORE_PG_SCHEMA in Timestore)
    catalog_schema: str = "timestore"
    # where local storage targets keep Parquet files (the workload writes here)
    storage_root: Path = Path(".walduck/storage")

    # Kafka topics (one place for their names)
    changes_topic: str = "walduck.changes"
    deltas_topic: str = "walduck.deltas"
    dlq_topic: str = "walduck.dlq"
    topic_partitions: int = 4
    # largest record on the changes/deltas topics (topic max.message.bytes, producer max_request_size,
    # consumer max_partition_fetch_bytes): a delta of a few thousand partition entries is a few MB
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    # logical decoding
    slot_name: str = "walduck"
    publication_name: str = "walduck_catalog"

    # contexts
    context_mode: ContextMode = ContextMode.INCREMENTAL

    def admin_dsn(self) -> str:
        return self.pg_admin_dsn or self.pg_dsn

    def read_dsn(self) -> str:
        return self.pg_read_dsn or self.pg_dsn

    def exec_dsn(self) -> str:
        return self.pg_exec_dsn or self.pg_dsn

    def resolved_storage_root(self) -> Path:
        return self.storage_root.resolve()


def load_settings(**overrides: object) -> WalduckSettings:
    """Settings from the environment, with explicit (CLI flag) overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return WalduckSettings(**clean)
