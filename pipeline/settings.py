"""Knobs of the compactor (``WALDUCK_COMPACTOR_`` environment variables)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class CompactorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALDUCK_COMPACTOR_", extra="ignore")

    # a window is sealed at a transaction boundary once it is this old or holds this many changes
    flush_interval_ms: int = 50
    flush_max_changes: int = 5000
    # Prometheus /metrics port (0 = do not serve)
    metrics_port: int = 9102
    # consumer group of the compactor processes
    group_id: str = "walduck-compactor"
    # a member that stops heartbeating loses its partitions after this long (broker minimum 6000). Short, so a
    # crashed compactor's partitions move quickly; a member that stalls past it (seen with a 1M-record backlog
    # on 2 cores) has its next offset commit refused, counts walduck_compactor_commits_lost_total and
    # re-restores its partitions from the deltas topic instead of exiting
    session_timeout_ms: int = 10000
    # records per poll
    max_poll_records: int = 2000
    # a transaction share still missing records once a later transaction was seen (its records are not coming:
    # the connector publishes in commit order) goes to the DLQ after this many later records or this many
    # seconds, whichever first, and its partition seals past it (pipeline/compaction.py, "Incomplete
    # transactions"). Below the service's min_lsn wait (30 s) so read-your-writes reads are still answered.
    share_expire_records: int = 10000
    share_expire_s: float = 10.0
