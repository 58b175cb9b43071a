"""The one rule attributing a partition to a schema version (issue 20; ``docs/contexts.md``, "Schema evolution").

A partition belongs to the schema version its own row names, ``metadata.schemaVersionId`` (read like
PostgreSQL's ``->>``: a string as it is, any other JSON as its text), and to none when it names none. Never its
manifest's ``schema_version_id``: that changes after the files were written (a manifest moved to a new version,
a file copied into a newer manifest) without any partition row changing, so the stream (which sees partition
rows) and a read of PostgreSQL (which sees the manifest as it is now) would attribute the same file differently.
The compactor, the rebuild/bootstrap reads, full-scan mode and ``walduck verify`` all use this module.

The attribution is a hint only: a dataset relation takes each file's columns from its footer
(``sinks/context/file_columns.py``) and uses the version only for files whose footer cannot be read.
"""

from __future__ import annotations

from typing import Any

from walduck.jsonexact import dumps_exact

METADATA_KEY = "schemaVersionId"

SQL_EXPRESSION = "p.metadata->>'schemaVersionId'"
"""The rule in SQL over ``dataset_partitions p`` (bulk and per-row catalog reads)."""


def partition_schema_version(metadata: Any) -> str | None:
    """The schema version a partition row with ``metadata`` (any jsonb value) belongs to."""
    if not isinstance(metadata, dict):
        return None
    value = metadata.get(METADATA_KEY)
    if value is None or isinstance(value, str):
        return value
    return dumps_exact(value).decode()
