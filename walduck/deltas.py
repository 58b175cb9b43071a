"""The delta schema: what the compactor publishes to the deltas topic and context shards apply.

A delta is the net effect of a window of whole source transactions on one dataset's
*visible* partition set (partitions of the published manifest of each day shard), plus
dataset / schema-version / storage-target rows. One Kafka message = one delta = one atomic
apply. The deltas topic is co-partitioned with the changes topic: a delta produced from
changes-topic partition ``p`` is written to deltas-topic partition ``p``.

Idempotence: every delta names the input window it covers (``src_partition``,
``src_offset_from``..``src_offset_to``, inclusive) and the source commit-LSN range
(``lsn_from``..``lsn_to``). One window yields at most one delta per dataset (plus at most one
global delta, ``dataset_id=None``, for heartbeats and storage targets), all naming the same
window. A context shard stores, in the same DuckDB transaction as the change, the highest
``src_offset_to`` it applied per (``src_partition``, ``dataset_id`` or the global stream); a
delta whose ``src_offset_to`` is not above it is a re-delivery and is dropped.

Partition entries (``upserts``) carry everything a context needs:
``id, dataset_id, manifest_id, manifest_shard, storage_target_id, file_path, file_format,
start_time, end_time, row_count, file_size_bytes, schema_version_id, table_name,
partition_key`` (times ISO 8601 UTC).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from walduck.config import DEFAULT_MAX_MESSAGE_BYTES
from walduck.jsonexact import dumps_exact
from walduck.records import GLOBAL_KEY, MalformedRecord, decode_object
from walduck.shardkey import shard_id

DELTA_SCHEMA_VERSION = 1

PARTITION_FIELDS = (
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
    "schema_version_id",
    "table_name",
    "partition_key",
)


class DeltaKind(StrEnum):
    DELTA = "delta"
    HEARTBEAT = "heartbeat"


@dataclass(slots=True)
class ShardChange:
    """Net change of one (dataset, manifest shard)'s visible partitions."""

    upserts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    published_manifest_id: str | None = None


@dataclass(slots=True)
class Delta:
    kind: DeltaKind
    src_partition: int
    src_offset_from: int
    src_offset_to: int
    lsn_from: int
    lsn_to: int
    commit_ts_max: str
    raw_changes: int = 0
    dataset_id: str | None = None
    # dataset row after the window (None = unchanged); {"id": …, "deleted": True} when removed
    dataset: dict[str, Any] | None = None
    schema_versions: list[dict[str, Any]] = field(default_factory=list)
    storage_targets: list[dict[str, Any]] = field(default_factory=list)
    shards: dict[str, ShardChange] = field(default_factory=dict)
    snapshot: bool = False
    # set when the window held a change of this dataset that could not travel (an oversize stub,
    # walduck/sizepolicy.py): contexts rebuild the dataset from PostgreSQL (the reason, for their logs)
    resync: str | None = None
    v: int = DELTA_SCHEMA_VERSION

    def kafka_key(self) -> bytes:
        if self.dataset_id is None:
            return GLOBAL_KEY.encode()
        shards = list(self.shards)
        return shard_id(self.dataset_id, shards[0] if len(shards) == 1 else "*").encode()

    @property
    def entry_count(self) -> int:
        return (
            sum(len(s.upserts) + len(s.deletes) for s in self.shards.values())
            + (self.dataset is not None)
            + len(self.schema_versions)
            + len(self.storage_targets)
        )

    def to_bytes(self) -> bytes:
        return dumps_exact(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes | None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Delta:
        """Decode and validate; raises :class:`~walduck.records.MalformedRecord`. ``max_bytes``: the one size
        limit (``WALDUCK_MAX_MESSAGE_BYTES``, :mod:`walduck.sizepolicy`)."""
        doc = decode_object(raw, max_bytes, "delta")
        if doc.get("v") != DELTA_SCHEMA_VERSION:
            raise MalformedRecord(f"unknown delta version {doc.get('v')!r}")
        try:
            kind = DeltaKind(doc["kind"])
            ints = [
                doc[k] for k in ("src_partition", "src_offset_from", "src_offset_to", "lsn_from", "lsn_to")
            ]
            commit_ts = doc["commit_ts_max"]
            shards_doc = doc.get("shards") or {}
            shards = {
                str(name): ShardChange(
                    upserts=list(s.get("upserts") or []),
                    deletes=[str(x) for x in s.get("deletes") or []],
                    published_manifest_id=s.get("published_manifest_id"),
                )
                for name, s in shards_doc.items()
            }
        except KeyError as exc:
            raise MalformedRecord(f"missing field {exc.args[0]!r}") from None
        except (ValueError, AttributeError, TypeError) as exc:
            raise MalformedRecord(f"invalid delta: {exc}") from None
        if not all(isinstance(x, int) and x >= 0 for x in ints):
            raise MalformedRecord("offsets and LSNs must be non-negative integers")
        for shard in shards.values():
            for up in shard.upserts:
                if not isinstance(up, dict) or "id" not in up or "file_path" not in up:
                    raise MalformedRecord("partition upsert without id/file_path")
        return cls(
            kind=kind,
            src_partition=ints[0],
            src_offset_from=ints[1],
            src_offset_to=ints[2],
            lsn_from=ints[3],
            lsn_to=ints[4],
            commit_ts_max=commit_ts,
            raw_changes=int(doc.get("raw_changes", 0)),
            dataset_id=doc.get("dataset_id"),
            dataset=doc.get("dataset"),
            schema_versions=list(doc.get("schema_versions") or []),
            storage_targets=list(doc.get("storage_targets") or []),
            shards=shards,
            snapshot=bool(doc.get("snapshot", False)),
            resync=doc.get("resync") if isinstance(doc.get("resync"), str) else None,
        )
