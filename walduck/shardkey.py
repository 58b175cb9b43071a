"""The manifest shard key: the one helper every component uses.

Timestore shards manifests by the UTC day of a partition's ``start_time`` (``YYYY-MM-DD``);
rows written before sharding existed hold the legacy shard ``root``.
"""

from __future__ import annotations

from datetime import UTC, datetime

LEGACY_SHARD = "root"


def shard_for(start_time: datetime | str | None) -> str:
    """UTC day (``YYYY-MM-DD``) of a partition start time; ``root`` when unknown."""
    if start_time is None:
        return LEGACY_SHARD
    if isinstance(start_time, str):
        start_time = datetime.fromisoformat(start_time)
    if start_time.tzinfo is None:
        start_time = start_time.replace(tzinfo=UTC)
    return start_time.astimezone(UTC).strftime("%Y-%m-%d")


def shard_id(dataset_id: str, manifest_shard: str) -> str:
    """The key of one context shard unit: ``<dataset_id>/<manifest_shard>``."""
    return f"{dataset_id}/{manifest_shard}"
