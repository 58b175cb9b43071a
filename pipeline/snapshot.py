"""Compactor state snapshots: the whole state of one changes partition as records of the state topic.

Pure logic, no Kafka (the runner writes and reads them, ``pipeline/state_topic.py``). Why periodic full
snapshots rather than one compacted record per state entry (``docs/compactor.md`` § State snapshots):

* restore reads exactly one snapshot: the newest *head* record names the state-partition offset of its first
  chunk, so the reader seeks there and reads ``chunks`` records. What it reads is the size of the state (the
  catalog's visible partitions of this changes partition), never the history, and it does not depend on when
  Kafka's log cleaner last ran (a per-entry changelog is bounded only once the cleaner caught up);
* the deltas are already the per-window changelog: writing every entry a second time for each window would
  double every window's produce; a snapshot costs one write of the state per ``snapshot_ratio`` × state
  entries produced (amortised ≤ 1 / ratio extra bytes per delta entry);
* the state topic is compacted (``cleanup.policy=compact``): keys are ``head`` and ``chunk/<i>``, so the
  cleaner keeps one snapshot per partition (a smaller snapshot writes tombstones for the chunk keys it no
  longer uses). Disk is bounded by the catalog too.

A snapshot is written inside the Kafka transaction of a window, after that window's deltas were acknowledged
and before the input offsets: its head records ``covered_to`` (the last input offset it includes) and
``deltas_offset`` (the offset of the last delta it includes), so state, deltas and consumer offsets become
visible together or not at all. It is taken only when the compactor is *at rest* (:attr:`Compactor.at_rest`: (no open window, no
half-received share, no restored window being re-processed): its state is then exactly the effect of the
input through ``covered_to``. Restore = decode the snapshot + replay only the deltas after ``deltas_offset``
(:func:`pipeline.compaction.restore_from_deltas` with ``base``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from pipeline.compaction import Compactor, ManifestInfo, ShardState, compact_entry, entry_dict
from walduck.errors import Unprocessable
from walduck.jsonexact import dumps_exact, loads_exact

FORMAT = 1
HEAD_KEY = b"head"
CHUNK_PREFIX = b"chunk/"
CHUNK_BYTES = 1 << 20  # target size of one chunk record (well below max.message.bytes)
_PIECE = 256  # partition entries encoded per call


class BadSnapshot(Unprocessable, ValueError):
    """A snapshot record that cannot be used (wrong format, a chunk missing): restore falls back."""


def chunk_key(index: int) -> bytes:
    return CHUNK_PREFIX + f"{index:06d}".encode()


@dataclass(frozen=True, slots=True)
class SnapshotHead:
    """The last record of a snapshot (key ``head``): which chunks make it and what it covers."""

    src_partition: int
    changes_topic: str
    deltas_topic: str
    group_id: str
    sequence: int  # +1 per snapshot of this partition
    covered_to: int  # the last input (changes) offset whose effect the state holds; resume at +1
    deltas_offset: int  # offset of the last delta the state includes (-1: none); replay only the ones after
    chunks: int
    first_offset: int  # state-partition offset of chunk 0
    entries: int  # partition entries in the state (sizes the next snapshot interval)
    created_at: str
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> SnapshotHead:
        try:
            doc = orjson.loads(raw or b"")
            head = cls(**doc)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise BadSnapshot(f"unreadable snapshot head: {exc}") from exc
        if head.format != FORMAT:
            raise BadSnapshot(f"snapshot format {head.format}, this compactor reads {FORMAT}")
        return head

    def same_stream(self, src_partition: int, changes_topic: str, deltas_topic: str, group_id: str) -> bool:
        """A head written by a compactor of this group for this partition (a shared state topic is harmless)."""
        return (self.src_partition, self.changes_topic, self.deltas_topic, self.group_id) == (
            src_partition,
            changes_topic,
            deltas_topic,
            group_id,
        )


def _items(compactor: Compactor) -> Iterator[list[Any]]:
    """The state as a stream of small JSON-able items (a big shard is split into several ``s`` items)."""
    yield ["c", compactor.covered_to, compactor.last_offset]
    yield ["d", sorted(compactor.datasets)]
    yield ["l", dict(sorted(compactor.last_applied.items()))]
    for manifest_id, info in compactor.manifests.items():
        yield ["m", manifest_id, info.dataset_id, info.shard, info.status, info.schema_version_id]
    for (dataset_id, shard), state in compactor.shards.items():
        # the state holds compact entries (``pipeline.compaction.PartitionEntry``); the snapshot carries the
        # delta entries (dicts), made one piece at a time so a big shard is never a list of dicts at once
        entries = list(state.partitions.values())
        if not entries:
            yield ["s", dataset_id, shard, state.published_manifest_id, []]
        for i in range(0, len(entries), _PIECE):
            piece = [entry_dict(e) for e in entries[i : i + _PIECE]]
            yield ["s", dataset_id, shard, state.published_manifest_id, piece]
    for manifest_id, rows in compactor.hidden.items():
        yield ["h", manifest_id, rows]


def _encoded_pieces(item: list[Any], limit: int) -> Iterator[bytes]:
    raw = dumps_exact(item)
    if len(raw) <= limit or item[0] != "s" or len(item[4]) <= 1:
        yield raw
        return
    half = len(item[4]) // 2
    yield from _encoded_pieces([*item[:4], item[4][:half]], limit)
    yield from _encoded_pieces([*item[:4], item[4][half:]], limit)


def encode_chunks(compactor: Compactor, sequence: int, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """The state of ``compactor`` as chunk record values (``{"seq":…,"i":…,"items":[…]}``), in order."""
    chunks: list[bytes] = []
    pieces: list[bytes] = []
    size = 0

    def close() -> None:
        nonlocal pieces, size
        head = b'{"seq":%d,"i":%d,"items":[' % (sequence, len(chunks))
        chunks.append(head + b",".join(pieces) + b"]}")
        pieces, size = [], 0

    for item in _items(compactor):
        for piece in _encoded_pieces(item, chunk_bytes):
            if pieces and size + len(piece) > chunk_bytes:
                close()
            pieces.append(piece)
            size += len(piece) + 1
    if pieces or not chunks:
        close()
    return chunks


def decode_snapshot(head: SnapshotHead, chunks: dict[int, bytes]) -> Compactor:
    """The compactor a snapshot describes. ``chunks``: chunk index -> value, as read after ``first_offset``."""
    compactor = Compactor(head.src_partition)
    for index in range(head.chunks):
        raw = chunks.get(index)
        if raw is None:
            raise BadSnapshot(
                f"snapshot {head.sequence} of partition {head.src_partition}: chunk {index} missing"
            )
        doc = loads_exact(raw)
        if not isinstance(doc, dict) or doc.get("seq") != head.sequence or doc.get("i") != index:
            raise BadSnapshot(f"snapshot {head.sequence}: chunk {index} belongs to another snapshot")
        for item in doc["items"]:
            _apply_item(compactor, item)
    if compactor.covered_to != head.covered_to:
        raise BadSnapshot(
            f"snapshot {head.sequence}: covers {compactor.covered_to}, head says {head.covered_to}"
        )
    return compactor


def _apply_item(compactor: Compactor, item: list[Any]) -> None:
    tag = item[0]
    if tag == "c":
        compactor.covered_to, compactor.last_offset = int(item[1]), int(item[2])
    elif tag == "d":
        compactor.datasets.update(item[1])
    elif tag == "l":
        compactor.last_applied.update({k: int(v) for k, v in item[1].items()})
    elif tag == "m":
        compactor.manifests[item[1]] = ManifestInfo(item[2], item[3], item[4], item[5])
    elif tag == "s":
        state = compactor.shards.setdefault((item[1], item[2]), ShardState(item[3]))
        for entry in item[4]:
            state.partitions[entry["id"]] = compact_entry(entry)
    elif tag == "h":
        compactor.hidden[item[1]] = item[2]
    else:
        raise BadSnapshot(f"unknown snapshot item {tag!r}")


def snapshot_due(
    records_since: int,
    state_entries: int,
    min_records: int,
    ratio: float,
    *,
    age_s: float = 0.0,
    max_age_s: float | None = None,
    enabled: bool = True,
) -> bool:
    """A new snapshot is due once the deltas produced since the last one (deltas + their entries, i.e. what a
    restore would replay) reach ``max(min_records, ratio × state entries)``: restore then reads at most the
    state plus ``max(min_records, ratio × state)`` tail records, whatever the history. Also once the last one
    is ``max_age_s`` old and anything was produced since: the deltas a restore needs are then never older than
    that (what makes a time-bounded deltas retention safe, docs/operations.md "Retention")."""
    if not enabled or records_since <= 0:
        return False
    if max_age_s is not None and age_s >= max_age_s:
        return True
    return records_since >= max(min_records, ratio * state_entries)
