"""The manifest shard key: the one helper every component uses.

Timestore shards manifests by the UTC day of a partition's ``start_time`` (``YYYY-MM-DD``);
rows written before sharding existed hold the legacy shard ``root``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from walduck.timeutil import instant_day

LEGACY_SHARD = "root"


def shard_for(start_time: datetime | str | None) -> str:
    """UTC day (``YYYY-MM-DD``) of a partition start time; ``root`` when unknown."""
    if start_time is None:
        return LEGACY_SHARD
    if isinstance(start_time, str):
        return instant_day(start_time)  # also ±infinity, expanded and BC years (walduck/timeutil.py)
    if start_time.tzinfo is None:
        start_time = start_time.replace(tzinfo=UTC)
    return start_time.astimezone(UTC).strftime("%Y-%m-%d")


def shard_id(dataset_id: str, manifest_shard: str) -> str:
    """The key of one context shard unit: ``<dataset_id>/<manifest_shard>``."""
    return f"{dataset_id}/{manifest_shard}"
