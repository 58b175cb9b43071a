"""Knobs of the SQL query service (``WALDUCK_QUERY_*`` environment variables; the older ``WALDUCK_<FIELD>`` names and
Timestore's own names still work: :func:`walduck.config.component_config`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings

from sinks.service.iam import IamPolicy
from walduck.config import component_config
from walduck.errors import WalduckError

# fields that were WALDUCK_QUERY_* already (no older name)
_ALREADY_PREFIXED = (
    "host",
    "port",
    "max_body_bytes",
    "request_timeout_s",
    "row_cap",
    "byte_cap",
    "max_concurrent",
    "queue_wait_s",
    "gzip_min_bytes",
)
# Timestore's variable names (Timestore's header IAM, its /sql limits), accepted after walduck's
_TIMESTORE = {
    "require_scope": ("TIMESTORE_REQUIRE_SCOPE",),
    "admin_scope": ("TIMESTORE_ADMIN_SCOPE",),
    "sql_read_scope": ("TIMESTORE_SQL_READ_SCOPE",),
    "sql_exec_scope": ("TIMESTORE_SQL_EXEC_SCOPE",),
    "metrics_scope": ("TIMESTORE_METRICS_SCOPE",),
    "sql_max_length": ("TIMESTORE_SQL_MAX_LENGTH",),
    "exec_statement_timeout_ms": ("TIMESTORE_SQL_TIMEOUT_MS",),
}


class QuerySettings(BaseSettings):
    model_config = component_config(
        "WALDUCK_QUERY_",
        names={"request_timeout_s": "WALDUCK_QUERY_TIMEOUT_S"},
        legacy=dict.fromkeys(_ALREADY_PREFIXED),
        also=_TIMESTORE,
    )

    host: str = "127.0.0.1"
    port: int = 8080

    # IAM (Timestore's header IAM): comma lists; empty = the check is open. The service refuses to start while a route group
    # is open unless iam_open says so explicitly (Timestore's open mode, logged as a warning at start)
    iam_open: bool = False
    require_scope: str = ""
    admin_scope: str = ""
    sql_read_scope: str = ""
    sql_exec_scope: str = ""
    metrics_scope: str = ""
    # a file holding a bearer token (a mounted k8s Secret key) that /metrics accepts as well as the metrics scope:
    # a PodMonitor cannot send x-iam-scopes, but it sends `Authorization: Bearer` (its `authorization` field);
    # read at each scrape, so a rotated Secret is picked up
    metrics_token_file: Path | None = None

    # /sql/exec on a superuser connection, or one that reaches pg_execute_server_program / pg_read_server_files /
    # pg_write_server_files, is refused (403) unless this says otherwise (docs/security.md "Roles")
    exec_allow_superuser: bool = False

    # request limits
    # request bodies above this many bytes are refused with 413 before parsing (Fastify's bodyLimit default)
    max_body_bytes: int = 1024 * 1024
    sql_max_length: int = 10_000
    request_timeout_s: float = 30.0
    row_cap: int = 100_000
    byte_cap: int = 64 * 1024 * 1024
    max_concurrent: int = 4
    # how long a request may wait for a free query slot before 429
    queue_wait_s: float = 0.5
    # /sql/exec: SET statement_timeout (Timestore's TIMESTORE_SQL_TIMEOUT_MS)
    exec_statement_timeout_ms: int = 30_000
    # audit writer: flush when this many rows are queued or after this interval
    audit_batch_size: int = 200
    audit_flush_interval_s: float = 0.5
    # responses of at least this many bytes are gzip-compressed for a client sending Accept-Encoding: gzip
    # (0 = never compress); the byte cap counts the body before compression
    gzip_min_bytes: int = 1024
    # /ready: 503 while the contexts are staler than this (seconds)
    ready_max_staleness_s: float = 60.0

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
    """The service would start with routes open to any caller, and WALDUCK_QUERY_IAM_OPEN=true was not given."""


def require_iam_mode(settings: QuerySettings) -> list[str]:
    """At start: refuse open route groups unless ``iam_open``; returns the open groups (logged by the caller)."""
    groups = settings.iam_policy().open_route_groups()
    if groups and not settings.iam_open:
        raise IamNotConfigured(
            "refusing to start: these routes would answer any caller: "
            + "; ".join(groups)
            + ". Configure the scopes (Timestore's names: docs/security.md, 'Scopes'), or set WALDUCK_QUERY_IAM_OPEN=true"
            " to run open on purpose"
        )
    return groups
