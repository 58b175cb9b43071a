"""The Timestore catalog's tables as walduck sees them: names, publication order and how a row routes.

A row belongs to the dataset named by its *routing column* (``datasets.id``, ``<table>.dataset_id``); that
dataset id is its Kafka key (:data:`walduck.records.GLOBAL_KEY` for rows of no dataset: storage targets).
Connector (stream and snapshot) and compactor read these definitions; nothing else spells them.
"""

from __future__ import annotations

from typing import Any

from walduck.deltas import PARTITION_FIELDS

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


PARTITION_FIELDS_FROM_METADATA = frozenset({"schema_version_id", "table_name"})
"""The fields of a delta's partition entry (:data:`walduck.deltas.PARTITION_FIELDS`) that are no column of
``dataset_partitions``: the compactor lifts them out of the row's ``metadata`` (``schemaVersionId``,
``tableName``: :data:`CONSUMED_JSON_KEYS`). Every other field is the column of that name."""

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
    PARTITIONS: (frozenset(PARTITION_FIELDS) - PARTITION_FIELDS_FROM_METADATA) | {"metadata"},
}
"""The columns of each table some consumer (compactor, context) reads: the others may be left out of a record
that would not fit the size limit otherwise (:mod:`walduck.sizepolicy`). Those of ``dataset_partitions`` are the
ones the compactor builds a delta's partition entry from: :data:`walduck.deltas.PARTITION_FIELDS` less
:data:`PARTITION_FIELDS_FROM_METADATA`, plus ``metadata`` (which holds those)."""

CONSUMED_JSON_KEYS: dict[str, dict[str, frozenset[str]]] = {
    PARTITIONS: {"metadata": frozenset({"schemaVersionId", "tableName"})},
}
"""JSON columns of which consumers read only some keys: the compactor takes a partition's schema version and
table name from its ``metadata`` (``pipeline/compaction.py``), the bulk path the same two keys
(``sinks/context/bulkload.py``); nothing reads the rest. An oversize record may drop the other keys
(:mod:`walduck.sizepolicy`, ``projected_json``)."""

JSON_COLUMNS: dict[str, frozenset[str]] = {
    STORAGE_TARGETS: frozenset({"config"}),
    DATASETS: frozenset({"metadata"}),
    SCHEMA_VERSIONS: frozenset({"schema"}),
    MANIFESTS: frozenset({"summary", "statistics", "metadata"}),
    PARTITIONS: frozenset({"partition_key", "metadata", "column_statistics", "column_bloom_filters"}),
}
"""The ``jsonb`` columns of each published table; every other column is ``text``, ``integer``, ``bigint`` or
``timestamptz`` (:data:`INSTANT_COLUMNS`). Checked against the migrated catalog's ``information_schema``
(``tests/integration/catalog/test_column_types.py``). A source that does not carry PostgreSQL's types itself
(Debezium's JSON without schemas, ``connectors/debezium/``) reads them from here."""

INSTANT_COLUMNS: dict[str, frozenset[str]] = {
    STORAGE_TARGETS: frozenset({"created_at", "updated_at"}),
    DATASETS: frozenset({"created_at", "updated_at"}),
    SCHEMA_VERSIONS: frozenset({"created_at"}),
    MANIFESTS: frozenset({"created_at", "updated_at", "published_at"}),
    PARTITIONS: frozenset({"start_time", "end_time", "created_at"}),
}
"""The ``timestamptz`` columns of each published table (see :data:`JSON_COLUMNS`)."""
