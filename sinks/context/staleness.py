"""Staleness: how far behind the catalog a context shard is, in seconds. One definition, one gauge writer.

The staleness of a context shard is ``now − the newest commit time it has applied`` (``ShardProgress.
newest_commit_ts``: the ``commit_ts_max`` of its last non-snapshot delta; heartbeats and watermarks count, so
an idle but caught-up shard stays fresh). A shard that has applied nothing has no staleness (``None``), and
a snapshot piece says nothing until the snapshot is complete. A context's staleness is the maximum over its
shards. This module is the only writer of ``walduck_shard_staleness_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from walduck import metrics
from walduck.timeutil import parse_iso, utcnow


def of(newest_commit_ts: str | None, now: datetime | None = None) -> float | None:
    """Seconds since ``newest_commit_ts`` (never negative); ``None`` when nothing was applied or unparsable."""
    if not newest_commit_ts:
        return None
    try:
        return max(((now or utcnow()) - parse_iso(newest_commit_ts)).total_seconds(), 0.0)
    except (ValueError, TypeError):
        return None


def publish(shard: int, newest_commit_ts: str | None, now: datetime | None = None) -> float | None:
    """The shard's staleness, also set on its gauge; returns it."""
    seconds = of(newest_commit_ts, now)
    if seconds is not None:
        metrics.SHARD_STALENESS.labels(shard=str(shard)).set(seconds)
    return seconds


def overall(per_shard: Iterable[float | None]) -> float | None:
    """A context's staleness: the most stale of its shards (``None`` before any shard applied anything)."""
    values = [s for s in per_shard if s is not None]
    return max(values) if values else None
