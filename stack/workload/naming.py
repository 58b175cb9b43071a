"""Pure helpers: Timestore's path/slug sanitising, partition file paths, deterministic ids."""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from collections.abc import Mapping
from typing import Any

_UNSAFE_SEGMENT = re.compile(r"[^a-z0-9._-]")

ID_PREFIXES = {
    "dataset": "ds",
    "schema_version": "dsv",
    "manifest": "dm",
    "partition": "part",
    "ingestion_batch": "ing",
    "lifecycle_audit": "la",
    "access_audit": "daa",
    "compaction_checkpoint": "cc",
}


def sanitize_segment(text: str) -> str:
    """A path segment as Timestore writes it: lower-cased, chars outside ``[a-z0-9._-]`` → ``_``."""
    return _UNSAFE_SEGMENT.sub("_", text.lower())


def partition_file_path(slug: str, partition_key: Mapping[str, str], partition_id: str) -> str:
    """``<sanitized-slug>/<k>=<v>/…(keys sorted)/<partitionId>.parquet`` (Timestore's dataset_partitions: storage target kind + file_path)."""
    segments = [sanitize_segment(slug)]
    segments += [
        f"{sanitize_segment(k)}={sanitize_segment(str(v))}" for k, v in sorted(partition_key.items())
    ]
    segments.append(f"{sanitize_segment(partition_id)}.parquet")
    return "/".join(segments)


class IdFactory:
    """Deterministic ``<prefix>-<uuid4>`` ids from a seed (same seed + salt → same sequence)."""

    def __init__(self, seed: int, salt: str = "") -> None:
        self._rng = random.Random(f"walduck-ids:{seed}:{salt}")

    def uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def new(self, kind: str) -> str:
        return f"{ID_PREFIXES.get(kind, kind)}-{self.uuid()}"


def js_json(value: Any) -> str:
    """``JSON.stringify`` formatting (no spaces, insertion order kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def schema_checksum(fields: list[Mapping[str, Any]]) -> str:
    """Timestore's schema checksum: sha1 of ``JSON.stringify(fields.map({name,type}))`` (order-sensitive)."""
    payload = js_json([{"name": f["name"], "type": f["type"]} for f in fields])
    return hashlib.sha1(payload.encode()).hexdigest()


def ingestion_signature(
    dataset_id: str,
    slug: str,
    schema_checksum_value: str,
    partition_key: Mapping[str, str],
    start_iso: str,
    end_iso: str,
    row_hash: str,
) -> str:
    """sha256 over {datasetId, slug, schemaChecksum, sorted partitionKey, start, end, rowHash}."""
    doc = {
        "datasetId": dataset_id,
        "slug": slug,
        "schemaChecksum": schema_checksum_value,
        "partitionKey": dict(sorted(partition_key.items())),
        "start": start_iso,
        "end": end_iso,
        "rowHash": row_hash,
    }
    return hashlib.sha256(js_json(doc).encode()).hexdigest()


def choose_weighted(rng: random.Random, weights: Mapping[str, float]) -> str:
    """One key of ``weights`` (positive weights only), drawn with ``rng``."""
    names = [k for k, w in weights.items() if w > 0]
    if not names:
        raise ValueError("no shape has a positive weight")
    return rng.choices(names, weights=[weights[k] for k in names], k=1)[0]
