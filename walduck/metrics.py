"""Every walduck metric, in one place (prometheus-client, ``walduck_`` prefix, base units).

``docs/metrics.md`` documents each one; components import what they publish from here.
Label values are bounded: table/op names, DLQ reasons (a short fixed vocabulary), Kafka
partition numbers, rebuild scopes. Never dataset ids or user names.
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import Counter, Gauge, Histogram, start_http_server

BUILD_INFO = Gauge("walduck_build_info", "Always 1; the labels say which build runs.", ["version", "python"])
try:
    _VERSION = metadata.version("walduck")
except metadata.PackageNotFoundError:  # a source tree run without installing
    _VERSION = "unknown"
BUILD_INFO.labels(version=_VERSION, python=platform.python_version()).set(1)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- shared -------------------------------------------------------------------------------
DLQ_RECORDS = Counter(
    "walduck_dlq_records_total",
    "Records sent to the dead-letter topic, by component and reason class.",
    ["component", "reason"],
)
KAFKA_CONSUMER_LAG = Gauge(
    "walduck_kafka_consumer_lag_records",
    "High watermark minus next offset to consume, per consumer component and partition.",
    ["component", "topic", "partition"],
)

# --- connector (connectors/) ---------------------------------------------------------------
CONNECTOR_RECORDS = Counter(
    "walduck_connector_records_total",
    "Change records published, by source table and operation.",
    ["table", "op"],
)
CONNECTOR_OVERSIZE_RECORDS = Counter(
    "walduck_connector_oversize_records_total",
    "Change records over WALDUCK_MAX_MESSAGE_BYTES made to fit, by strategy (walduck/sizepolicy.py).",
    ["strategy"],
)
CONNECTOR_TRANSACTIONS = Counter(
    "walduck_connector_transactions_total", "Source transactions fully acknowledged by Kafka."
)
CONNECTOR_CONFIRMED_LSN = Gauge(
    "walduck_connector_confirmed_flush_lsn",
    "LSN last confirmed to PostgreSQL (flush position), as an integer.",
)
CONNECTOR_LAG_BYTES = Gauge(
    "walduck_connector_replication_lag_bytes", "Server WAL end minus confirmed flush LSN, in bytes."
)
CONNECTOR_LAG_SECONDS = Gauge(
    "walduck_connector_replication_lag_seconds",
    "Now minus the commit time of the newest transaction acknowledged by Kafka (0 when caught up).",
)
CONNECTOR_PRODUCE_LATENCY = Histogram(
    "walduck_connector_produce_latency_seconds",
    "Time from handing a transaction's records to the producer to Kafka acknowledging all of them.",
    buckets=LATENCY_BUCKETS,
)
CONNECTOR_ERRORS = Counter(
    "walduck_connector_errors_total", "Connector errors by kind (postgres, kafka, decode).", ["kind"]
)
CONNECTOR_ROW_ENCODER = Gauge(
    "walduck_connector_row_encoder",
    "1 for the row encoder in use (native: compiled connectors._rowjson; python: the pure-Python fallback).",
    ["encoder"],
)
CONNECTOR_SLOT_WAITING = Gauge(
    "walduck_connector_slot_waiting_seconds",
    "How long the connector has been waiting for its replication slot, held by another walsender (0 = not waiting).",
)
CONNECTOR_SLOT_BUSY = Counter(
    "walduck_connector_slot_busy_total",
    "START_REPLICATION attempts refused because another walsender held the slot (retried every slot_retry_interval).",
)
CONNECTOR_SLOT_TAKEOVERS = Counter(
    "walduck_connector_slot_takeovers_total",
    "Walsenders holding the slot terminated by the connector (WALDUCK_SLOT_TAKEOVER_AFTER).",
)
CONNECTOR_SLOT_ACQUIRE = Histogram(
    "walduck_connector_slot_acquire_seconds",
    "From a session's first START_REPLICATION attempt to streaming (includes any wait for the slot).",
    buckets=LATENCY_BUCKETS,
)
CONNECTOR_SNAPSHOT_ROWS = Counter(
    "walduck_connector_snapshot_rows_total", "Rows read by the initial snapshot.", ["table"]
)

# --- compactor (pipeline/) -----------------------------------------------------------------
COMPACTOR_RECORDS_IN = Counter("walduck_compactor_records_in_total", "Change records consumed.")
COMPACTOR_DELTAS_OUT = Counter("walduck_compactor_deltas_out_total", "Deltas produced.", ["kind"])
COMPACTOR_RAW_CHANGES = Counter(
    "walduck_compactor_raw_changes_total", "Raw change records folded into produced deltas."
)
COMPACTOR_DELTA_ENTRIES = Counter(
    "walduck_compactor_delta_entries_total",
    "Entries (partition upserts/deletes, dataset, schema, storage rows) in produced deltas; "
    "raw_changes_total / delta_entries_total is the compaction ratio.",
)
COMPACTOR_FLUSH_LATENCY = Histogram(
    "walduck_compactor_flush_latency_seconds",
    "From the first record of a flush window arriving to its deltas being acknowledged.",
    buckets=LATENCY_BUCKETS,
)
COMPACTOR_STATE_PARTITIONS = Gauge(
    "walduck_compactor_state_partitions", "Visible partitions tracked in compactor state."
)
COMPACTOR_STATE_SHARDS = Gauge("walduck_compactor_state_shards", "Shards tracked in compactor state.")
COMPACTOR_PARTITION_ASSIGNMENTS = Counter(
    "walduck_compactor_partition_assignments_total",
    "Changes partitions assigned to this member, by outcome (restored: state replayed from the deltas topic; "
    "kept: the member's own state reused after a rebalance gave the partition back).",
    ["outcome"],
)
COMPACTOR_ASSIGNED_PARTITIONS = Gauge(
    "walduck_compactor_assigned_partitions", "Changes partitions this member holds now."
)
COMPACTOR_RESTORE_DURATION = Histogram(
    "walduck_compactor_restore_duration_seconds",
    "One assignment's restore pass: reading the deltas of every newly assigned partition and rebuilding state.",
    buckets=LATENCY_BUCKETS,
)
COMPACTOR_COMMITS_LOST = Counter(
    "walduck_compactor_commits_lost_total",
    "Offset commits refused because the group rebalanced meanwhile (partitions re-restored from deltas).",
)

# --- context shards (sinks/) ---------------------------------------------------------------
SHARD_STALENESS = Gauge(
    "walduck_shard_staleness_seconds",
    "Now minus T, where every catalog change committed at or before T is applied, per context shard.",
    ["shard"],
)
SHARD_APPLIED_LSN = Gauge(
    "walduck_shard_applied_lsn", "Source commit LSN applied, per context shard.", ["shard"]
)
END_TO_END_LATENCY = Histogram(
    "walduck_end_to_end_latency_seconds",
    "Source commit to queryable in a context (measured at apply).",
    buckets=LATENCY_BUCKETS,
)
DELTA_APPLY_DURATION = Histogram(
    "walduck_delta_apply_duration_seconds",
    "Duration of one apply transaction (one delta, or a batch of partition-only deltas and heartbeats).",
    buckets=LATENCY_BUCKETS,
)
CONTEXT_CHECKPOINTS = Counter(
    "walduck_context_checkpoints_total",
    "Checkpoints the deltas consumer ran while idle (result=done|busy: DuckDB refused, retried when next idle).",
    ["result"],
)
CONTEXT_CHECKPOINT_DURATION = Histogram(
    "walduck_context_checkpoint_duration_seconds",
    "Duration of an idle-time checkpoint of the context file (the writer waits meanwhile).",
    buckets=LATENCY_BUCKETS,
)
CONTEXT_WAL_BYTES = Gauge(
    "walduck_context_wal_bytes", "Size of the context's DuckDB WAL (changes not yet checkpointed)."
)
DELTAS_APPLIED = Counter(
    "walduck_deltas_applied_total", "Deltas applied (result=applied|duplicate).", ["result"]
)
REBUILD_DURATION = Histogram(
    "walduck_rebuild_duration_seconds",
    "Context rebuilds from PostgreSQL, by scope (dataset, shard, full).",
    ["scope"],
    buckets=LATENCY_BUCKETS,
)
REBUILDS = Counter(
    "walduck_rebuilds_total",
    "Context rebuilds from PostgreSQL, by scope (dataset, shard, full) and result (ok, error).",
    ["scope", "result"],
)
CACHE_EVENTS = Counter(
    "walduck_cache_events_total",
    "Context cache events: hit = served without waiting for a rebuild, miss = waited for one.",
    ["event"],
)
SKIPPED_PARTITIONS = Counter(
    "walduck_skipped_partitions_total", "Partitions skipped because their file was missing."
)
INCOMPATIBLE_PARTITION_COLUMNS = Counter(
    "walduck_incompatible_partition_columns_total",
    "Partitions read with a column as NULL because their file holds it with an incompatible type.",
)
PARTITIONS_OUTSIDE_ROOT = Counter(
    "walduck_partitions_outside_root_total",
    "Partitions skipped because their file lies outside the storage root (or resolves through a symlink outside it).",
)

# --- query service (sinks/) ----------------------------------------------------------------
QUERY_REQUESTS = Counter(
    "walduck_query_requests_total", "HTTP requests by route and status.", ["route", "status"]
)
QUERY_DURATION = Histogram(
    "walduck_query_duration_seconds", "HTTP request duration by route.", ["route"], buckets=LATENCY_BUCKETS
)
QUERY_INFLIGHT = Gauge("walduck_query_inflight", "SQL reads executing now.")
QUERY_PLANNING = Histogram(
    "walduck_query_planning_seconds",
    "Request received to DuckDB starting execution (parse, policy, pruning, bind).",
    buckets=LATENCY_BUCKETS,
)

QUERY_LIMITS = Counter(
    "walduck_query_limits_total",
    "Requests a limit refused or cut, by limit (body_size, byte_cap, row_cap, memory, temp_space).",
    ["limit"],
)
QUERY_GUARD_REFUSALS = Counter(
    "walduck_query_guard_refusals_total",
    "Planned reads the execution guard refused (a policy or planner bug caught by the second layer), by reason.",
    ["reason"],
)


def serve_metrics(port: int, addr: str) -> None:
    """Expose ``/metrics`` on its own port (connector, compactor) at ``addr`` (``WALDUCK_METRICS_HOST``).
    The query service mounts it on its HTTP port."""
    start_http_server(port, addr=addr)
