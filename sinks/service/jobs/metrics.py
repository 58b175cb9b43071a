"""Prometheus metrics of the SQL job service (docs/metrics.md, "SQL jobs")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

JOB_STAGE_SECONDS = Histogram(
    "walduck_job_stage_seconds",
    "Time a job spent in one stage (parse, layer_lookup, tail_replay, head, publish, total).",
    ["stage"],
    buckets=_BUCKETS,
)
JOBS_FINISHED = Counter(
    "walduck_jobs_finished_total",
    "Jobs that ended, by outcome (completed, failed, canceled, timeout).",
    ["outcome"],
)
JOB_LAYER_LOOKUPS = Counter(
    "walduck_job_layer_lookups_total",
    "Tail layer lookups: hit (whole tail cached), partial (a prefix cached), miss, none (no tail).",
    ["result"],
)
JOB_QUEUE_DEPTH = Gauge("walduck_job_queue_depth", "Jobs waiting for a job slot.")
JOBS_RUNNING = Gauge("walduck_jobs_running", "Jobs holding a job slot now.")
JOB_LAYERS = Gauge("walduck_job_layers", "Tail layers in the cache.")
JOB_LAYER_BYTES = Gauge("walduck_job_layer_bytes", "Bytes of the tail layers in the cache.")
JOB_GC_RUNS = Counter("walduck_job_gc_runs_total", "Runs of the job GC.")
JOB_GC_REMOVED = Counter(
    "walduck_job_gc_removed_total", "What the job GC (and the layer cache bounds) removed.", ["kind"]
)
JOB_GC_BYTES_FREED = Counter(
    "walduck_job_gc_bytes_freed_total", "Bytes freed by the job GC and layer eviction (results, layers)."
)
