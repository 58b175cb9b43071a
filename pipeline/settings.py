"""Knobs of the compactor (``WALDUCK_COMPACTOR_`` environment variables)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DYNAMIC_SESSION_TIMEOUT_MS = 10_000
STATIC_SESSION_TIMEOUT_MS = 30_000


class CompactorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALDUCK_COMPACTOR_", extra="ignore")

    # a window is sealed at a transaction boundary once it is this old or holds this many changes
    flush_interval_ms: int = 50
    flush_max_changes: int = 5000
    # bound of one window's Kafka transaction (begin .. commit); past it the member drops the partition's
    # state as if fenced (the broker aborts the transaction after transaction.timeout.ms)
    transaction_timeout_s: float = 30.0
    # Prometheus /metrics port (0 = do not serve)
    metrics_port: int = 9102
    # consumer group of the compactor processes
    group_id: str = "walduck-compactor"
    # static group membership (KIP-345, aiokafka's group_instance_id): a stable name per member (k8s: the
    # StatefulSet pod name). A member restarted under the same name within the session timeout gets its
    # partitions back without a rebalance, and its peers keep theirs. Empty = dynamic membership. Never run
    # two live members under one name (the broker fences the older one)
    group_instance_id: str = ""
    # a member that stops heartbeating loses its partitions after this long (broker minimum 6000). Unset: 10 s
    # for dynamic members (a crashed member's partitions move quickly) and 30 s for static ones (a restart
    # inside it costs no rebalance; a member that never comes back keeps its partitions dark this long). A
    # member that stalls past it (seen with a 1M-record backlog on 2 cores) has its next offset commit
    # refused, counts walduck_compactor_commits_lost_total and restores what it lost instead of exiting
    session_timeout_ms: int | None = None
    # records per poll
    max_poll_records: int = 2000
    # a transaction share still missing records once a later transaction was seen (its records are not coming:
    # the connector publishes in commit order) goes to the DLQ after this many later records or this many
    # seconds, whichever first, and its partition seals past it (pipeline/compaction.py, "Incomplete
    # transactions"). Below the service's min_lsn wait (30 s) so read-your-writes reads are still answered.
    share_expire_records: int = 10000
    share_expire_s: float = 10.0
    # state snapshots (pipeline/snapshot.py; docs/compactor.md "State snapshots"): written to the
    # compactor-state topic, in a window's transaction, once the deltas produced since the last one (deltas +
    # their entries: what a restore would replay) reach max(snapshot_min_records, snapshot_ratio x the
    # partition entries in state). A restore reads one snapshot + at most that many tail records. Off: every
    # restore replays the deltas partition from the beginning (the old path)
    snapshots: bool = True
    snapshot_min_records: int = 10000
    snapshot_ratio: float = 1.0
    # ... and at least this often while deltas are produced: a restore never needs deltas older than this (plus
    # the time the compactor was down), so the deltas topic's retention only has to exceed it
    snapshot_max_age_s: float = 3600.0
    # a clean stop (SIGTERM) snapshots every partition with deltas since its last snapshot: the next owner
    # replays nothing (a kill -9 leaves at most one interval of tail)
    snapshot_on_stop: bool = True

    @property
    def static_member(self) -> bool:
        return bool(self.group_instance_id)

    def resolved_session_timeout_ms(self) -> int:
        if self.session_timeout_ms is not None:
            return self.session_timeout_ms
        return STATIC_SESSION_TIMEOUT_MS if self.static_member else DYNAMIC_SESSION_TIMEOUT_MS
