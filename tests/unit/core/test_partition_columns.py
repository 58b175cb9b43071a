"""The partition column lists derived from :data:`walduck.deltas.PARTITION_FIELDS` (issue 14) keep their values."""

from __future__ import annotations

from sinks.context import ddl
from walduck.catalog_tables import CONSUMED_COLUMNS, PARTITIONS


def test_context_partition_columns_are_the_delta_fields_with_shard_and_location() -> None:
    assert ddl.PARTITION_COLUMNS == (
        "id",
        "dataset_id",
        "shard",
        "manifest_id",
        "manifest_shard",
        "storage_target_id",
        "file_path",
        "location",
        "file_format",
        "start_time",
        "end_time",
        "row_count",
        "file_size_bytes",
        "schema_version_id",
        "table_name",
        "partition_key",
    )


def test_consumed_partition_columns_are_the_delta_fields_read_from_the_catalog_row() -> None:
    assert CONSUMED_COLUMNS[PARTITIONS] == frozenset(
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
    )
