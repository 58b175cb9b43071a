"""Knobs of the SQL query service (``WALDUCK_`` environment variables, Timestore names as aliases)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sinks.service.iam import IamPolicy
from walduck.errors import WalduckError


def _env(name: str, *timestore: str) -> AliasChoices:
    """``WALDUCK_<NAME>`` first, then Timestore's variable names (Timestore's header IAM)."""
    return AliasChoices(f"WALDUCK_{name.upper()}", *timestore)


class QuerySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALDUCK_", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", validation_alias=_env("query_host"))
    port: int = Field(8080, validation_alias=_env("query_port"))

    # IAM (Timestore's header IAM): comma lists; empty = the check is open. The service refuses to start while a route group
    # is open unless iam_open says so explicitly (Timestore's open mode, logged as a warning at start)
    iam_open: bool = Field(False, validation_alias=_env("iam_open"))
    require_scope: str = Field("", validation_alias=_env("require_scope", "TIMESTORE_REQUIRE_SCOPE"))
    admin_scope: str = Field("", validation_alias=_env("admin_scope", "TIMESTORE_ADMIN_SCOPE"))
    sql_read_scope: str = Field("", validation_alias=_env("sql_read_scope", "TIMESTORE_SQL_READ_SCOPE"))
    sql_exec_scope: str = Field("", validation_alias=_env("sql_exec_scope", "TIMESTORE_SQL_EXEC_SCOPE"))
    metrics_scope: str = Field("", validation_alias=_env("metrics_scope", "TIMESTORE_METRICS_SCOPE"))
    # a file holding a bearer token (a mounted k8s Secret key) that /metrics accepts as well as the metrics scope:
    # a PodMonitor cannot send x-iam-scopes, but it sends `Authorization: Bearer` (its `authorization` field);
    # read at each scrape, so a rotated Secret is picked up
    metrics_token_file: Path | None = Field(None, validation_alias=_env("metrics_token_file"))

    # /sql/exec on a superuser connection, or one that reaches pg_execute_server_program / pg_read_server_files /
    # pg_write_server_files, is refused (403) unless this says otherwise (docs/security.md "Roles")
    exec_allow_superuser: bool = Field(False, validation_alias=_env("exec_allow_superuser"))

    # request limits
    # request bodies above this many bytes are refused with 413 before parsing (Fastify's bodyLimit default)
    max_body_bytes: int = Field(1024 * 1024, validation_alias=_env("query_max_body_bytes"))
    sql_max_length: int = Field(10_000, validation_alias=_env("sql_max_length", "TIMESTORE_SQL_MAX_LENGTH"))
    request_timeout_s: float = Field(30.0, validation_alias=_env("query_timeout_s"))
    row_cap: int = Field(100_000, validation_alias=_env("query_row_cap"))
    byte_cap: int = Field(64 * 1024 * 1024, validation_alias=_env("query_byte_cap"))
    max_concurrent: int = Field(4, validation_alias=_env("query_max_concurrent"))
    # how long a request may wait for a free query slot before 429
    queue_wait_s: float = Field(0.5, validation_alias=_env("query_queue_wait_s"))
    # /sql/exec: SET statement_timeout (Timestore's TIMESTORE_SQL_TIMEOUT_MS)
    exec_statement_timeout_ms: int = Field(
        30_000, validation_alias=_env("exec_statement_timeout_ms", "TIMESTORE_SQL_TIMEOUT_MS")
    )
    # audit writer: flush when this many rows are queued or after this interval
    audit_batch_size: int = Field(200, validation_alias=_env("audit_batch_size"))
    audit_flush_interval_s: float = Field(0.5, validation_alias=_env("audit_flush_interval_s"))
    # responses of at least this many bytes are gzip-compressed for a client sending Accept-Encoding: gzip
    # (0 = never compress); the byte cap counts the body before compression
    gzip_min_bytes: int = Field(1024, validation_alias=_env("query_gzip_min_bytes"))
    # /ready: 503 while the contexts are staler than this (seconds)
    ready_max_staleness_s: float = Field(60.0, validation_alias=_env("ready_max_staleness_s"))

    def iam_policy(self) -> IamPolicy:
        """The IAM rules these scope settings configure (``sinks.service.iam.IamPolicy``)."""
        return IamPolicy.from_scopes(
            require_scope=self.require_scope,
            admin_scope=self.admin_scope,
            sql_read_scope=self.sql_read_scope,
            sql_exec_scope=self.sql_exec_scope,
            metrics_scope=self.metrics_scope,
        )


class IamNotConfigured(WalduckError, RuntimeError):
    """The service would start with routes open to any caller, and WALDUCK_IAM_OPEN=true was not given."""


def require_iam_mode(settings: QuerySettings) -> list[str]:
    """At start: refuse open route groups unless ``iam_open``; returns the open groups (logged by the caller)."""
    groups = settings.iam_policy().open_route_groups()
    if groups and not settings.iam_open:
        raise IamNotConfigured(
            "refusing to start: these routes would answer any caller: "
            + "; ".join(groups)
            + ". Configure the scopes (Timestore's names: docs/security.md, 'Scopes'), or set WALDUCK_IAM_OPEN=true"
            " to run open on purpose"
        )
    return groups
