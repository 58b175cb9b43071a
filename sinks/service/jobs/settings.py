"""Knobs of the SQL job service (``WALDUCK_JOBS_*`` environment variables; docs/api.md, "Jobs")."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class JobSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALDUCK_JOBS_", extra="ignore", populate_by_name=True)

    # jobs executing at once: own thread pool and DuckDB instances, apart from /sql/read's slots
    max_concurrent: int = Field(2, ge=1)
    # jobs waiting for a slot; more → 429
    max_queued: int = Field(100, ge=0)
    # per-job DuckDB instance: threads and memory_limit (the instance holds only this job's work)
    duckdb_threads: int = Field(1, ge=1)
    # job worker threads yield the CPU to /sql/read (Linux, per thread): SCHED_IDLE when thread_idle, else
    # thread_nice more than the process
    thread_idle: bool = True
    thread_nice: int = Field(10, ge=0, le=19)
    memory_limit: str = "512MB"
    # per-job timeout (preparing + tail replay + head); a request may ask for less, never more
    timeout_s: float = Field(300.0, gt=0)
    max_timeout_s: float = Field(3600.0, gt=0)
    # how long a finished job (status, logs, result) is kept; a request may ask for less, never more
    ttl_s: float = Field(3600.0, gt=0)
    max_ttl_s: float = Field(86400.0, gt=0)
    # result caps (rows and Arrow bytes), as /sql/read's
    row_cap: int = Field(100_000, ge=1)
    byte_cap: int = Field(64 * 1024 * 1024, ge=1)
    # Arrow bytes all kept results may hold together; a job whose result would pass it fails (result_space)
    results_max_bytes: int = Field(1024**3, ge=0)
    # project limits
    max_scripts: int = Field(200, ge=1)
    max_script_chars: int = Field(100_000, ge=1)
    max_log_entries: int = Field(1000, ge=10)
    # layer cache: directory (empty = a temporary directory), bounds, TTL since last use
    layer_dir: str = ""
    layer_max_bytes: int = Field(2 * 1024**3, ge=0)
    layer_max_count: int = Field(256, ge=0)
    layer_ttl_s: float = Field(3600.0, gt=0)
    # the GC of expired jobs, results and unused layers
    gc_interval_s: float = Field(30.0, gt=0)
