"""Knobs of the context shards (``WALDUCK_CONTEXT_*`` environment variables; the older ``WALDUCK_<FIELD>`` names still
work: :func:`walduck.config.component_config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from walduck.config import WalduckSettings, component_config


class SinkSettings(BaseSettings):
    # the context_* fields are WALDUCK_CONTEXT_PATH, WALDUCK_CONTEXT_SNAPSHOT_DIR, … (component_config), and
    # sink_bootstrap is WALDUCK_CONTEXT_BOOTSTRAP
    model_config = component_config("WALDUCK_CONTEXT_", names={"sink_bootstrap": "WALDUCK_CONTEXT_BOOTSTRAP"})

    # the DuckDB file holding every context shard (default: <data_dir>/context/context.duckdb)
    context_path: Path | None = None
    # rebuilds and full-scan applies read partitions with COPY -> Arrow -> one DuckDB INSERT (no Python per row);
    # false = the per-row path (dicts), kept as the benchmark's baseline (docs/performance.md, "bootstrap")
    bulk_load: bool = True
    # a whole-catalog bulk read (bootstrap, rebuild of all) is split over this many PostgreSQL connections sharing
    # one exported snapshot, each reading a block range of dataset_partitions (sinks/context/bulkload.py); 1 = one
    bulk_read_connections: int = Field(default=2, ge=1, le=16)
    # how a new, wiped or retention-truncated shard is built: "snapshot" = from PostgreSQL (one REPEATABLE READ
    # snapshot, bulk COPY, then the deltas from the end offsets recorded before it; sinks/context/build.py);
    # "replay" = replaying the deltas partition from offset 0 (the old path, kept as the benchmark's baseline;
    # a partition whose head was deleted by retention is built from the snapshot anyway)
    sink_bootstrap: Literal["snapshot", "replay"] = "snapshot"
    # refresh every plain view under the writer lock at the end of a build (the old behaviour; minutes at 1M
    # partitions). false = the views are refreshed afterwards in bounded chunks (view_refresh_budget_s)
    build_refresh_views: bool = False
    # DuckDB instance limits (per instance, not per connection)
    duckdb_memory_limit: str = "2GB"
    duckdb_threads: int = 2
    # where DuckDB spills what does not fit memory_limit (sorts, joins, aggregates of big reads); empty = DuckDB's
    # default, <context file>.tmp. The spill is bounded: a query needing more answers 503 (docs/api.md, limits);
    # DuckDB's own default is 90% of the free disk space of that drive
    duckdb_temp_directory: str = ""
    duckdb_max_temp_directory_size: str = "4GiB"
    # keep parsed Parquet footers across queries (DuckDB object cache, bounded by duckdb_memory_limit; ~7 KB per
    # 3-column partition file); without it every query re-reads every footer
    duckdb_parquet_metadata_cache: bool = True
    # DuckDB checkpoints (folds its WAL into the database file) at the commit that takes the WAL past this size,
    # and that apply waits for it (~0.3-0.6 s per 16 MB at 300k partitions). The deltas consumer checkpoints
    # instead when it has been idle checkpoint_idle_s and the WAL holds checkpoint_idle_min_bytes, so under bursty
    # load applies rarely pay; the threshold is the backstop for sustained load (fewer, longer stalls than
    # DuckDB's 16 MB default: ~2.5 s at 1M partitions; a crash replays at most this much WAL). docs/operations.md
    duckdb_checkpoint_threshold: str = "64MB"
    checkpoint_idle_s: float = 1.0  # 0 = never checkpoint when idle (DuckDB's threshold only)
    checkpoint_idle_min_bytes: int = 1 << 20
    # cursors handed to readers; a reader waits at most reader_wait_s for one
    reader_pool_size: int = 8
    reader_wait_s: float = 5.0
    # extra directories readable by SQL besides the storage root (other local storage targets)
    allowed_directories: list[str] = []
    # plain DuckDB views `timestore.<view>` are refreshed at most this often (the planner path is exact)
    view_refresh_interval_s: float = 1.0
    # ... and a refresh (which holds the writer) may take at most this share of the writer's time: under a
    # steady write load the interval stretches to (last refresh duration / share); 0 = no such limit
    view_refresh_max_share: float = 0.1
    # one (non-forced) refresh stops starting new views after this many seconds; the rest stay dirty for the next
    # refresh, so a build that dirtied every dataset never holds the writer for minutes (0 = no bound)
    view_refresh_budget_s: float = 0.2
    # context snapshots (sinks/context/context_snapshot.py, docs/contexts.md): a directory shared by the query
    # replicas, OUTSIDE the storage root and allowed_directories (refused otherwise: SQL could read it). A replica
    # publishes its context there (content-hashed Parquet + a manifest) once bootstrapped and then every
    # context_snapshot_interval_s while it changes; a replica starting with an empty context loads the newest
    # one and follows the deltas from its offsets instead of building from PostgreSQL. None = off
    context_snapshot_dir: Path | None = None
    context_snapshot_interval_s: float = Field(default=300.0, ge=0)  # 0 = never publish (boot from it only)
    context_snapshot_keep: int = Field(default=3, ge=1)  # manifests kept (and the objects they name)
    # ... and sooner, once this many index rows changed since the last publish and the burst settled (a backlog
    # such as a connector's initial snapshot: a replica booting afterwards replays a short tail); 0 = off
    context_snapshot_max_tail_changes: int = Field(default=100_000, ge=0)
    # the deltas consumer
    consumer_max_records: int = 500
    consumer_poll_ms: int = 100
    # HTTP port of a query service (used by `walduck query verify --url`)
    service_url: str = ""

    @field_validator("context_snapshot_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value

    def resolved_context_path(self, walduck: WalduckSettings) -> Path:
        if self.context_path is not None:
            return self.context_path.resolve()
        return (walduck.data_dir / "context" / "context.duckdb").resolve()
