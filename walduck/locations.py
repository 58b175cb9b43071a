"""Where a partition's file lives: its storage target's kind and config plus its ``file_path``.

One rule for every reader of the catalog: the context (apply, rebuild, bulk load) and ``walduck verify`` use
this function, so they can never disagree on a file's location."""

from __future__ import annotations

import os
from typing import Any


def partition_location(storage_target: dict[str, Any] | None, file_path: str, default_root: str) -> str:
    """local ``<config.root or default root>/<file_path>``; ``s3://<bucket>/``, ``gs://<bucket>/``,
    ``azure://<host>/<container>/`` for those kinds. An absolute path or URL is taken as it is; a missing or
    unknown target kind reads as local (Timestore's default target)."""
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
