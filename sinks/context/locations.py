"""Where a partition's file lives (Timestore's dataset_partitions: storage target kind + file_path: target kind + file_path)."""

from __future__ import annotations

import os
from typing import Any


def partition_location(storage_target: dict[str, Any] | None, file_path: str, default_root: str) -> str:
    """local ``<config.root or default root>/<file_path>``; ``s3://``, ``gs://``, ``azure://`` otherwise.

    Mirrors ``walduck.catalog_reader.partition_location`` (same signature) so either can be used.
    """
    if file_path.startswith(("s3://", "gs://", "azure://", "/")):
        return file_path
    target = storage_target or {}
    kind = target.get("kind") or "local"
    config = target.get("config") or {}
    rel = file_path.lstrip("/")
    if kind == "s3":
        return f"s3://{config.get('bucket', '')}/{rel}"
    if kind == "gcs":
        return f"gs://{config.get('bucket', '')}/{rel}"
    if kind == "azure_blob":
        host = config.get("endpoint") or f"{config.get('accountName', '')}.blob.core.windows.net"
        host = str(host).removeprefix("https://").removeprefix("http://").rstrip("/")
        return f"azure://{host}/{config.get('container', '')}/{rel}"
    root = config.get("root") or default_root
    return os.path.join(str(root), rel)


def is_local(location: str) -> bool:
    return "://" not in location
