"""The Timestore catalog's tables as walduck sees them: names, publication order and how a row routes.

A row belongs to the dataset named by its *routing column* (``datasets.id``, ``<table>.dataset_id``); that
dataset id is its Kafka key (:data:`walduck.records.GLOBAL_KEY` for rows of no dataset: storage targets).
Connector (stream and snapshot) and compactor read these definitions; nothing else spells them.
"""

from __future__ import annotations

from typing import Any

STORAGE_TARGETS = "storage_targets"
DATASETS = "datasets"
SCHEMA_VERSIONS = "dataset_schema_versions"
MANIFESTS = "dataset_manifests"
PARTITIONS = "dataset_partitions"

PUBLISHED_TABLES = (STORAGE_TARGETS, DATASETS, SCHEMA_VERSIONS, MANIFESTS, PARTITIONS)
"""The tables the publication carries, in foreign-key order (the initial snapshot reads them in this order)."""


def routing_column(table: str) -> str | None:
    """The column holding a row's dataset id; ``None`` for a table whose rows belong to no dataset."""
    if table == STORAGE_TARGETS:
        return None
    return "id" if table == DATASETS else "dataset_id"


def dataset_of(table: str, row: dict[str, Any]) -> str | None:
    """The dataset a row of ``table`` belongs to (``None``: a global row, or the routing column is NULL)."""
    column = routing_column(table)
    value = None if column is None else row.get(column)
    return None if value is None else str(value)


CONSUMED_COLUMNS: dict[str, frozenset[str]] = {
    STORAGE_TARGETS: frozenset({"id", "name", "kind", "config"}),
    DATASETS: frozenset(
        {
            "id",
            "slug",
            "name",
            "description",
            "status",
            "write_format",
            "default_storage_target_id",
            "metadata",
            "created_at",
            "updated_at",
        }
    ),
    SCHEMA_VERSIONS: frozenset({"id", "dataset_id", "version", "schema"}),
    MANIFESTS: frozenset({"id", "dataset_id", "manifest_shard", "status", "schema_version_id"}),
    PARTITIONS: frozenset(
        {
            "id",
            "dataset_id",
            "manifest_id",
            "manifest_shard",
            "storage_target_id",
            "file_path",
            "file_format",
            "start_time",
            "end_time",
            "row_count",
            "file_size_bytes",
            "partition_key",
            "metadata",
        }
    ),
}
"""The columns of each table some consumer (compactor, context) reads: the others may be left out of a record
that would not fit the size limit otherwise (:mod:`walduck.sizepolicy`)."""
