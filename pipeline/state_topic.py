"""Reading what a restore needs from Kafka: the newest state snapshot per partition and the deltas after it.

Both reads fetch every partition being restored at once (one :func:`~walduck.kafka_readers.committed_reader`: an aborted
transaction's snapshot or deltas are never seen). The newest snapshot is found from the END of the state
partition: its head is normally the last record before the transaction marker, so the reader looks at the last
few offsets (8× further back each time nothing is found), then seeks to the head's ``first_offset`` and reads
its chunks. What a restore reads is one snapshot and the deltas after it, whatever the length of the history
and whether the log cleaner has run (``pipeline/snapshot.py``, ``docs/compactor.md`` § State snapshots).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.snapshot import CHUNK_PREFIX, HEAD_KEY, BadSnapshot, SnapshotHead
from walduck.config import WalduckSettings
from walduck.deltas import Delta
from walduck.kafka_readers import committed_reader
from walduck.kafka_security import start_client
from walduck.records import MalformedRecord

_FIRST_LOOK_BACK = 4  # head + commit marker (+ a tombstone or two)


@dataclass(slots=True)
class StoredSnapshot:
    head: SnapshotHead
    head_offset: int
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class DeltasRead:
    deltas: list[Delta]
    start: int  # the offset asked for
    begin: int  # the partition's log start offset (retention may have moved it past ``start``)
    end: int  # the partition's end offset (read_committed) when the read began
    last_offset: int  # offset of the last delta read (-1: none)


async def _read_ranges(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]]
) -> dict[TopicPartition, list[ConsumerRecord]]:
    """The committed records of each ``tp`` at offsets ``start <= offset < stop``, all partitions at once."""
    got: dict[TopicPartition, list[ConsumerRecord]] = {tp: [] for tp in ranges}
    for tp, (start, _stop) in ranges.items():
        consumer.seek(tp, start)
    pending = {tp for tp, (start, stop) in ranges.items() if start < stop}
    while pending:
        # a short wait: the last offset of a range is often a transaction marker, which yields no record, so
        # a long timeout would be waited out in full once per range
        batch = await consumer.getmany(*pending, timeout_ms=50, max_records=20000)
        for tp, msgs in batch.items():
            stop = ranges[tp][1]
            got[tp].extend(m for m in msgs if m.offset < stop)
        pending = {tp for tp in pending if await consumer.position(tp) < ranges[tp][1]}
    return got


@contextlib.asynccontextmanager
async def _assigned(
    consumer: AIOKafkaConsumer, settings: WalduckSettings, topic: str, partitions: Iterable[int]
) -> AsyncIterator[tuple[dict[int, TopicPartition], dict[TopicPartition, int], dict[TopicPartition, int]]]:
    """``consumer`` started and assigned to ``partitions`` of ``topic``: each partition's ``TopicPartition`` and
    its log start and end offsets (``begins``, ``ends``, keyed by ``TopicPartition``); stopped on leaving."""
    await start_client(consumer, settings)
    try:
        tps = {p: TopicPartition(topic, p) for p in partitions}
        consumer.assign(list(tps.values()))
        begins = await consumer.beginning_offsets(list(tps.values()))
        ends = await consumer.end_offsets(list(tps.values()))
        yield tps, begins, ends
    finally:
        await consumer.stop()


async def read_snapshots(
    settings: WalduckSettings, topic: str, partitions: list[int], accept: Callable[[int, SnapshotHead], bool]
) -> dict[int, StoredSnapshot | None]:
    """The newest snapshot of each state partition whose head ``accept(partition, head)`` takes, with its chunk
    values (not decoded); ``None`` where the partition holds none."""
    out: dict[int, StoredSnapshot | None] = {p: None for p in partitions}
    if not partitions:
        return out
    consumer = committed_reader(settings)
    async with _assigned(consumer, settings, topic, partitions) as (tps, begins, ends):
        look_back = {p: _FIRST_LOOK_BACK for p in partitions}
        searching = {p for p in partitions if ends[tps[p]] > begins[tps[p]]}
        while searching:
            ranges = {
                tps[p]: (max(begins[tps[p]], ends[tps[p]] - look_back[p]), ends[tps[p]]) for p in searching
            }
            got = await _read_ranges(consumer, ranges)
            for p in list(searching):
                tp = tps[p]
                for msg in reversed(got[tp]):
                    if msg.key != HEAD_KEY or msg.value is None:
                        continue
                    with contextlib.suppress(BadSnapshot):
                        head = SnapshotHead.from_bytes(msg.value)
                        if accept(p, head):
                            out[p] = StoredSnapshot(head, msg.offset)
                            break
                if out[p] is not None or ranges[tp][0] <= begins[tp]:
                    searching.discard(p)
                else:
                    look_back[p] *= 8
        found = {p: s for p, s in out.items() if s is not None}
        if found:
            got = await _read_ranges(
                consumer, {tps[p]: (s.head.first_offset, s.head_offset) for p, s in found.items()}
            )
            for p, snapshot in found.items():
                for msg in got[tps[p]]:
                    if msg.key and msg.key.startswith(CHUNK_PREFIX) and msg.value is not None:
                        with contextlib.suppress(ValueError):
                            snapshot.chunks[int(msg.key[len(CHUNK_PREFIX) :])] = msg.value
        return out


async def read_deltas_from(settings: WalduckSettings, starts: dict[int, int]) -> dict[int, DeltasRead]:
    """Every delta of each deltas partition ``p`` from offset ``starts[p]`` to the partition's end, in ONE pass
    (one consumer fetching all of them at once). Malformed records are skipped (they were never produced by a
    compactor)."""
    topic = settings.deltas_topic
    out: dict[int, DeltasRead] = {}
    if not starts:
        return out
    consumer = committed_reader(settings)
    async with _assigned(consumer, settings, topic, starts) as (tps, begins, ends):
        ranges = {tp: (max(starts[p], begins[tp]), ends[tp]) for p, tp in tps.items()}
        got = await _read_ranges(consumer, ranges)
        for p, tp in tps.items():
            deltas: list[Delta] = []
            last = -1
            for msg in got[tp]:
                with contextlib.suppress(MalformedRecord):
                    deltas.append(Delta.from_bytes(msg.value, settings.max_message_bytes))
                    last = msg.offset
            out[p] = DeltasRead(deltas, starts[p], begins[tp], ends[tp], last)
        return out
