"""The reference consumer the tests check every context against: deltas applied to plain dicts.

Independent of ``sinks/context`` on purpose (a test model, not product code): it keeps only the rule a context
must follow, re-deliveries dropped when ``src_offset_to`` is not above the highest applied per
``(src_partition, dataset)``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.compaction import ShardKey
from walduck.deltas import Delta


def replay(deltas: Iterable[Delta], into: dict[ShardKey, dict[str, dict[str, Any]]] | None = None) -> dict:
    """Reference consumer: apply deltas to ``{(dataset, shard): {partition_id: entry}}``.

    Drops re-deliveries the way a context does (``src_offset_to`` not above the highest applied per
    ``(src_partition, dataset)``)."""
    visible = {} if into is None else into
    applied: dict[tuple[int, str | None], int] = {}
    for delta in deltas:
        mark = (delta.src_partition, delta.dataset_id)
        if delta.src_offset_to <= applied.get(mark, -1):
            continue
        applied[mark] = delta.src_offset_to
        if delta.dataset_id is None:
            continue
        for shard, change in delta.shards.items():
            parts = visible.setdefault((delta.dataset_id, shard), {})
            for part_id in change.deletes:
                parts.pop(part_id, None)
            for entry in change.upserts:
                parts[entry["id"]] = entry
            if not parts:
                del visible[(delta.dataset_id, shard)]
    return visible
