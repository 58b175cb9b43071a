"""Every walduck metric, in one place (prometheus-client, ``walduck_`` prefix, base units).

``docs/metrics.md`` documents each one; components import what they publish from here.
Label values are bounded: table/op names, DLQ reasons (a short fixed vocabulary), Kafka
partition numbers, rebuild scopes. Never dataset ids or user names.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

# every metric is created unregistered and added to the registry of the component that updates it (REGISTRIES,
# below): a process serves its own component's registry only, never another component's series


def _counter(*args: Any, **kwargs: Any) -> Counter:
    return Counter(*args, registry=None, **kwargs)


def _gauge(*args: Any, **kwargs: Any) -> Gauge:
    return Gauge(*args, registry=None, **kwargs)


def _histogram(*args: Any, **kwargs: Any) -> Histogram:
    return Histogram(*args, registry=None, **kwargs)


BUILD_INFO = _gauge("walduck_build_info", "Always 1; the labels say which build runs.", ["version", "python"])
try:
    _VERSION = metadata.version("walduck")
except metadata.PackageNotFoundError:  # a source tree run without installing
    _VERSION = "unknown"
BUILD_INFO.labels(version=_VERSION, python=platform.python_version()).set(1)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- shared -------------------------------------------------------------------------------
DLQ_RECORDS = _counter(
    "walduck_dlq_records_total",
    "Records sent to the dead-letter topic, by component and reason class.",
    ["component", "reason"],
)
KAFKA_CONSUMER_LAG = _gauge(
    "walduck_kafka_consumer_lag_records",
    "High watermark minus next offset to consume, per consumer component and partition.",
    ["component", "topic", "partition"],
)

# --- connector (connectors/) ---------------------------------------------------------------
CONNECTOR_RECORDS = _counter(
    "walduck_connector_records_total",
    "Change records published, by source table and operation.",
    ["table", "op"],
)
CONNECTOR_OVERSIZE_RECORDS = _counter(
    "walduck_connector_oversize_records_total",
    "Change records over WALDUCK_MAX_MESSAGE_BYTES made to fit, by strategy (walduck/sizepolicy.py).",
    ["strategy"],
)
CONNECTOR_TRANSACTIONS = _counter(
    "walduck_connector_transactions_total", "Source transactions fully acknowledged by Kafka."
)
CONNECTOR_CONFIRMED_LSN = _gauge(
    "walduck_connector_confirmed_flush_lsn",
    "LSN last confirmed to PostgreSQL (flush position), as an integer.",
)
CONNECTOR_LAG_BYTES = _gauge(
    "walduck_connector_replication_lag_bytes", "Server WAL end minus confirmed flush LSN, in bytes."
)
CONNECTOR_LAG_SECONDS = _gauge(
    "walduck_connector_replication_lag_seconds",
    "Now minus the commit time of the newest transaction acknowledged by Kafka (0 when caught up).",
)
CONNECTOR_PRODUCE_LATENCY = _histogram(
    "walduck_connector_produce_latency_seconds",
    "Time from handing a transaction's records to the producer to Kafka acknowledging all of them.",
    buckets=LATENCY_BUCKETS,
)
CONNECTOR_ERRORS = _counter(
    "walduck_connector_errors_total", "Connector errors by kind (postgres, kafka, decode).", ["kind"]
)
CONNECTOR_ROW_ENCODER = _gauge(
    "walduck_connector_row_encoder",
    "1 for the row encoder in use (native: compiled connectors._rowjson; python: the pure-Python fallback).",
    ["encoder"],
)
CONNECTOR_SLOT_WAITING = _gauge(
    "walduck_connector_slot_waiting_seconds",
    "How long the connector has been waiting for its replication slot, held by another walsender (0 = not waiting).",
)
CONNECTOR_SLOT_BUSY = _counter(
    "walduck_connector_slot_busy_total",
    "START_REPLICATION attempts refused because another walsender held the slot (retried every slot_retry_interval).",
)
CONNECTOR_SLOT_TAKEOVERS = _counter(
    "walduck_connector_slot_takeovers_total",
    "Walsenders holding the slot terminated by the connector (WALDUCK_CONNECTOR_SLOT_TAKEOVER_AFTER).",
)
CONNECTOR_SLOT_ACQUIRE = _histogram(
    "walduck_connector_slot_acquire_seconds",
    "From a session's first START_REPLICATION attempt to streaming (includes any wait for the slot).",
    buckets=LATENCY_BUCKETS,
)
CONNECTOR_SNAPSHOT_ROWS = _counter(
    "walduck_connector_snapshot_rows_total", "Rows read by the initial snapshot.", ["table"]
)

# --- compactor (pipeline/) -----------------------------------------------------------------
COMPACTOR_RECORDS_IN = _counter("walduck_compactor_records_in_total", "Change records consumed.")
COMPACTOR_DELTAS_OUT = _counter("walduck_compactor_deltas_out_total", "Deltas produced.", ["kind"])
COMPACTOR_RAW_CHANGES = _counter(
    "walduck_compactor_raw_changes_total", "Raw change records folded into produced deltas."
)
COMPACTOR_DELTA_ENTRIES = _counter(
    "walduck_compactor_delta_entries_total",
    "Entries (partition upserts/deletes, dataset, schema, storage rows) in produced deltas; "
    "raw_changes_total / delta_entries_total is the compaction ratio.",
)
COMPACTOR_FLUSH_LATENCY = _histogram(
    "walduck_compactor_flush_latency_seconds",
    "From the first record of a flush window arriving to its deltas being acknowledged.",
    buckets=LATENCY_BUCKETS,
)
COMPACTOR_STATE_PARTITIONS = _gauge(
    "walduck_compactor_state_partitions", "Visible partitions tracked in compactor state."
)
COMPACTOR_STATE_SHARDS = _gauge("walduck_compactor_state_shards", "Shards tracked in compactor state.")
COMPACTOR_PARTITION_ASSIGNMENTS = _counter(
    "walduck_compactor_partition_assignments_total",
    "Changes partitions assigned to this member, by outcome (restored: state replayed from the deltas topic; "
    "kept: the member's own state reused after a rebalance gave the partition back).",
    ["outcome"],
)
COMPACTOR_ASSIGNED_PARTITIONS = _gauge(
    "walduck_compactor_assigned_partitions", "Changes partitions this member holds now."
)
COMPACTOR_RESTORE_DURATION = _histogram(
    "walduck_compactor_restore_duration_seconds",
    "One assignment's restore pass: reading the deltas of every newly assigned partition and rebuilding state.",
    buckets=LATENCY_BUCKETS,
)
COMPACTOR_RESTORE_RECORDS = _counter(
    "walduck_compactor_restore_records_total",
    "Records read to restore compactor state: source=snapshot (state-topic chunks), tail (deltas after the "
    "snapshot), replay (deltas from the beginning: no snapshot yet).",
    ["source"],
)
COMPACTOR_SNAPSHOTS = _counter(
    "walduck_compactor_state_snapshots_total", "State snapshots committed to the compactor-state topic."
)
COMPACTOR_SNAPSHOT_BYTES = _counter(
    "walduck_compactor_state_snapshot_bytes_total", "Bytes of state snapshots committed (chunks and heads)."
)
COMPACTOR_COMMITS_LOST = _counter(
    "walduck_compactor_commits_lost_total",
    "Offset commits refused because the group rebalanced meanwhile (partitions re-restored from deltas).",
)
COMPACTOR_FENCED = _counter(
    "walduck_compactor_fenced_total",
    "Windows discarded because a newer owner of the changes partition fenced this member's transactional id.",
)

# --- context shards (sinks/) ---------------------------------------------------------------
SHARD_STALENESS = _gauge(
    "walduck_shard_staleness_seconds",
    "Now minus T, where every catalog change committed at or before T is applied, per context shard.",
    ["shard"],
)
SHARD_APPLIED_LSN = _gauge(
    "walduck_shard_applied_lsn", "Source commit LSN applied, per context shard.", ["shard"]
)
END_TO_END_LATENCY = _histogram(
    "walduck_end_to_end_latency_seconds",
    "Source commit to queryable in a context (measured at apply).",
    buckets=LATENCY_BUCKETS,
)
DELTA_APPLY_DURATION = _histogram(
    "walduck_delta_apply_duration_seconds",
    "Duration of one apply transaction (one delta, or a batch of partition-only deltas and heartbeats).",
    buckets=LATENCY_BUCKETS,
)
CONTEXT_CHECKPOINTS = _counter(
    "walduck_context_checkpoints_total",
    "Checkpoints the deltas consumer ran while idle (result=done|busy: DuckDB refused, retried when next idle).",
    ["result"],
)
CONTEXT_CHECKPOINT_DURATION = _histogram(
    "walduck_context_checkpoint_duration_seconds",
    "Duration of an idle-time checkpoint of the context file (the writer waits meanwhile).",
    buckets=LATENCY_BUCKETS,
)
CONTEXT_WAL_BYTES = _gauge(
    "walduck_context_wal_bytes", "Size of the context's DuckDB WAL (changes not yet checkpointed)."
)
DELTAS_APPLIED = _counter(
    "walduck_deltas_applied_total", "Deltas applied (result=applied|duplicate).", ["result"]
)
REBUILD_DURATION = _histogram(
    "walduck_rebuild_duration_seconds",
    "Context rebuilds from PostgreSQL, by scope (dataset, shard, full).",
    ["scope"],
    buckets=LATENCY_BUCKETS,
)
CONTEXT_SNAPSHOT_PUBLISHES = _counter(
    "walduck_context_snapshot_publishes_total",
    "Context snapshots published into WALDUCK_CONTEXT_SNAPSHOT_DIR, by result (ok, error).",
    ["result"],
)
CONTEXT_SNAPSHOT_PUBLISH_DURATION = _histogram(
    "walduck_context_snapshot_publish_seconds",
    "Time to publish one context snapshot (read transaction, Parquet objects, manifest).",
    buckets=LATENCY_BUCKETS,
)
CONTEXT_SNAPSHOT_PUBLISHED_AT = _gauge(
    "walduck_context_snapshot_published_timestamp_seconds",
    "Unix time of this replica's last published context snapshot.",
)
CONTEXT_SNAPSHOT_RESTORES = _counter(
    "walduck_context_snapshot_restores_total",
    "Empty contexts seeded at start from a published snapshot, by result (ok; none = nothing published;"
    " incompatible, corrupt, error = built from PostgreSQL instead).",
    ["result"],
)
REBUILDS = _counter(
    "walduck_rebuilds_total",
    "Context rebuilds from PostgreSQL, by scope (dataset, shard, full) and result (ok, error).",
    ["scope", "result"],
)
CACHE_EVENTS = _counter(
    "walduck_cache_events_total",
    "Context cache events: hit = served without waiting for a rebuild, miss = waited for one.",
    ["event"],
)
SKIPPED_PARTITIONS = _counter(
    "walduck_skipped_partitions_total", "Partitions skipped because their file was missing."
)
INCOMPATIBLE_PARTITION_COLUMNS = _counter(
    "walduck_incompatible_partition_columns_total",
    "Partitions read with a column as NULL because their file holds it with an incompatible type.",
)
PARTITIONS_OUTSIDE_ROOT = _counter(
    "walduck_partitions_outside_root_total",
    "Partitions skipped because their file lies outside the storage root (or resolves through a symlink outside it).",
)

# --- query service (sinks/) ----------------------------------------------------------------
QUERY_REQUESTS = _counter(
    "walduck_query_requests_total", "HTTP requests by route and status.", ["route", "status"]
)
QUERY_DURATION = _histogram(
    "walduck_query_duration_seconds", "HTTP request duration by route.", ["route"], buckets=LATENCY_BUCKETS
)
QUERY_INFLIGHT = _gauge("walduck_query_inflight", "SQL reads executing now.")
QUERY_PLANNING = _histogram(
    "walduck_query_planning_seconds",
    "Request received to DuckDB starting execution (parse, policy, pruning, bind).",
    buckets=LATENCY_BUCKETS,
)

QUERY_LIMITS = _counter(
    "walduck_query_limits_total",
    "Requests a limit refused or cut, by limit (body_size, byte_cap, row_cap, memory, temp_space).",
    ["limit"],
)
QUERY_GUARD_REFUSALS = _counter(
    "walduck_query_guard_refusals_total",
    "Planned reads the execution guard refused (a policy or planner bug caught by the second layer), by reason.",
    ["reason"],
)


# --- SQL jobs (sinks/service/jobs/, docs/metrics.md "SQL jobs") ------------------------------------
_JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

JOB_STAGE_SECONDS = _histogram(
    "walduck_job_stage_seconds",
    "Time a job spent in one stage (parse, layer_lookup, tail_replay, head, publish, total).",
    ["stage"],
    buckets=_JOB_BUCKETS,
)
JOBS_FINISHED = _counter(
    "walduck_jobs_finished_total",
    "Jobs that ended, by outcome (completed, failed, canceled, timeout).",
    ["outcome"],
)
JOB_LAYER_LOOKUPS = _counter(
    "walduck_job_layer_lookups_total",
    "Tail layer lookups: hit (whole tail cached), partial (a prefix cached), miss, none (no tail).",
    ["result"],
)
JOB_QUEUE_DEPTH = _gauge("walduck_job_queue_depth", "Jobs waiting for a job slot.")
JOBS_RUNNING = _gauge("walduck_jobs_running", "Jobs holding a job slot now.")
JOB_LAYERS = _gauge("walduck_job_layers", "Tail layers in the cache.")
JOB_LAYER_BYTES = _gauge("walduck_job_layer_bytes", "Bytes of the tail layers in the cache.")
JOB_GC_RUNS = _counter("walduck_job_gc_runs_total", "Runs of the job GC.")
JOB_GC_REMOVED = _counter(
    "walduck_job_gc_removed_total", "What the job GC (and the layer cache bounds) removed.", ["kind"]
)
JOB_GC_BYTES_FREED = _counter(
    "walduck_job_gc_bytes_freed_total", "Bytes freed by the job GC and layer eviction (results, layers)."
)

COMPONENT_METRICS: dict[str, tuple[Any, ...]] = {
    "connector": (
        DLQ_RECORDS,
        CONNECTOR_RECORDS,
        CONNECTOR_OVERSIZE_RECORDS,
        CONNECTOR_TRANSACTIONS,
        CONNECTOR_CONFIRMED_LSN,
        CONNECTOR_LAG_BYTES,
        CONNECTOR_LAG_SECONDS,
        CONNECTOR_PRODUCE_LATENCY,
        CONNECTOR_ERRORS,
        CONNECTOR_ROW_ENCODER,
        CONNECTOR_SLOT_WAITING,
        CONNECTOR_SLOT_BUSY,
        CONNECTOR_SLOT_TAKEOVERS,
        CONNECTOR_SLOT_ACQUIRE,
        CONNECTOR_SNAPSHOT_ROWS,
    ),
    "compactor": (
        DLQ_RECORDS,
        KAFKA_CONSUMER_LAG,
        COMPACTOR_RECORDS_IN,
        COMPACTOR_DELTAS_OUT,
        COMPACTOR_RAW_CHANGES,
        COMPACTOR_DELTA_ENTRIES,
        COMPACTOR_FLUSH_LATENCY,
        COMPACTOR_STATE_PARTITIONS,
        COMPACTOR_STATE_SHARDS,
        COMPACTOR_PARTITION_ASSIGNMENTS,
        COMPACTOR_ASSIGNED_PARTITIONS,
        COMPACTOR_RESTORE_DURATION,
        COMPACTOR_RESTORE_RECORDS,
        COMPACTOR_SNAPSHOTS,
        COMPACTOR_SNAPSHOT_BYTES,
        COMPACTOR_COMMITS_LOST,
        COMPACTOR_FENCED,
    ),
    # the query service process: the SQL API and the context shards its delta consumer keeps
    "query": (
        DLQ_RECORDS,
        KAFKA_CONSUMER_LAG,
        SHARD_STALENESS,
        SHARD_APPLIED_LSN,
        END_TO_END_LATENCY,
        DELTA_APPLY_DURATION,
        CONTEXT_CHECKPOINTS,
        CONTEXT_CHECKPOINT_DURATION,
        CONTEXT_WAL_BYTES,
        DELTAS_APPLIED,
        REBUILD_DURATION,
        REBUILDS,
        CONTEXT_SNAPSHOT_PUBLISHES,
        CONTEXT_SNAPSHOT_PUBLISH_DURATION,
        CONTEXT_SNAPSHOT_PUBLISHED_AT,
        CONTEXT_SNAPSHOT_RESTORES,
        CACHE_EVENTS,
        SKIPPED_PARTITIONS,
        INCOMPATIBLE_PARTITION_COLUMNS,
        PARTITIONS_OUTSIDE_ROOT,
        QUERY_REQUESTS,
        QUERY_DURATION,
        QUERY_INFLIGHT,
        QUERY_PLANNING,
        QUERY_LIMITS,
        QUERY_GUARD_REFUSALS,
        JOB_STAGE_SECONDS,
        JOBS_FINISHED,
        JOB_LAYER_LOOKUPS,
        JOB_QUEUE_DEPTH,
        JOBS_RUNNING,
        JOB_LAYERS,
        JOB_LAYER_BYTES,
        JOB_GC_RUNS,
        JOB_GC_REMOVED,
        JOB_GC_BYTES_FREED,
    ),
}


def _registry(metrics: tuple[Any, ...]) -> CollectorRegistry:
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, BUILD_INFO, *metrics):
        registry.register(collector)
    return registry


# one registry per component process; what its /metrics serves (walduck.health.serve_component, the query app)
REGISTRIES: dict[str, CollectorRegistry] = {name: _registry(ms) for name, ms in COMPONENT_METRICS.items()}


def serve_metrics(component: str, port: int, addr: str, health: Any) -> Any:
    """``/metrics`` (the component's registry), ``/live`` and ``/ready`` (``health``: walduck.health.Health) on
    their own port (connector, compactor) at ``addr`` (``WALDUCK_METRICS_HOST``). The query service answers them
    on its HTTP port."""
    from walduck.health import serve_component

    return serve_component(port, addr, REGISTRIES[component], health)
