"""The compactor process: changes topic -> :class:`~pipeline.compaction.Compactor` -> deltas topic.

Over 500 lines: the numbered consume -> compact -> transactional produce -> offsets protocol reads as one unit.

Plain aiokafka (see ``docs/compactor.md`` for why not faust-streaming). At-least-once delivery with an
exactly-once effect:

* each sealed window's deltas and the input offsets after it go to Kafka in ONE transaction
  (``send_offsets_to_transaction``) of a transactional producer owned by that changes partition
  (transactional id ``<group>.<changes topic>.<partition>``, EOS v1 style: aiokafka has no KIP-447
  group-metadata fencing). A new owner's producer start (``InitProducerId``) bumps the epoch and aborts
  the old owner's open transaction, so a stale member's writes are never committed (fenced); every reader
  of the deltas topic uses ``isolation_level="read_committed"`` (:mod:`walduck.kafka_readers`). DLQ records use a plain idempotent
  producer and are acknowledged before the transaction commits (DLQ is at-least-once);
* state snapshots (``pipeline/snapshot.py``): every so often (``snapshot_due``) a window's transaction also
  carries the partition's whole state, chunked, to the compacted compactor-state topic, so state, deltas and
  offsets never disagree. On assignment of changes partition ``p`` the compactor reads the newest snapshot of
  state partition ``p`` and replays only the deltas after the snapshot's deltas offset (no snapshot yet: the
  whole deltas partition, the old path) (:func:`~pipeline.compaction.restore_from_deltas`), which also tells
  the exact input offset to resume at (the first offset of the last, possibly cut, window). Deltas already
  present for that window are not produced again, so the deltas topic holds no duplicate.

Failover (``docs/compactor.md`` § Membership and failover): with ``WALDUCK_COMPACTOR_GROUP_INSTANCE_ID`` the
member is static (KIP-345), so a restart under the same name gets its partitions back without a rebalance.
aiokafka's group protocol is eager (every rebalance revokes everything), so a revoked partition's state is
parked, not dropped: when the next assignment gives it back and nobody produced deltas for it or committed
its offsets meanwhile, the parked state is reused as is. Only the other newly assigned partitions are
restored, all in one pass over the deltas topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced

from pipeline.compaction import Compactor, InvalidChange, OffsetRegression, Rejected, restore_from_deltas
from pipeline.settings import CompactorSettings
from pipeline.snapshot import (
    HEAD_KEY,
    BadSnapshot,
    SnapshotHead,
    chunk_key,
    decode_snapshot,
    encode_chunks,
    snapshot_due,
)
from pipeline.state_topic import read_deltas_from, read_snapshots
from walduck.config import WalduckSettings
from walduck.deltas import Delta
from walduck.dlq import DeadLetter
from walduck.errors import InvariantBroken
from walduck.kafka_readers import committed_reader
from walduck.kafka_security import client_kwargs, start_client
from walduck.metrics import (
    COMPACTOR_ASSIGNED_PARTITIONS,
    COMPACTOR_COMMITS_LOST,
    COMPACTOR_DELTA_ENTRIES,
    COMPACTOR_DELTAS_OUT,
    COMPACTOR_FENCED,
    COMPACTOR_FLUSH_LATENCY,
    COMPACTOR_PARTITION_ASSIGNMENTS,
    COMPACTOR_RAW_CHANGES,
    COMPACTOR_RECORDS_IN,
    COMPACTOR_RESTORE_DURATION,
    COMPACTOR_RESTORE_RECORDS,
    COMPACTOR_SNAPSHOT_BYTES,
    COMPACTOR_SNAPSHOTS,
    COMPACTOR_STATE_PARTITIONS,
    COMPACTOR_STATE_SHARDS,
    DLQ_RECORDS,
    KAFKA_CONSUMER_LAG,
)
from walduck.records import OVERSIZE_REASON, ChangeRecord, MalformedRecord, share_position
from walduck.timeutil import iso, parse_iso, utcnow

log = logging.getLogger(__name__)
COMPONENT = "compactor"
TRIM_AFTER_BYTES = 64 << 20
"""Once this many bytes of buffered share records were let go (``Compactor.take_released``) or produced (deltas,
snapshot chunks), the runner asks the C allocator to give its free memory back to the OS (``malloc_trim``):
the Kafka values a big transaction share held (a 1M-row initial snapshot: 1.3 GB) and a big window's payloads
are freed amid live allocations, and glibc's ``free`` returns only the top of its heap (issue 15: 1.21 GiB
kept after a 1M-row snapshot with the share trim only, 0.90 GiB after one more trim)."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where there is none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Give the C allocator's free memory back to the OS; False where that is not possible."""
    if MALLOC_TRIM is None:
        return False
    MALLOC_TRIM(0)
    return True


class UnackedDelta(InvariantBroken, RuntimeError):
    """Kafka did not acknowledge a delta or DLQ record: the input offsets must not be committed."""


class StateHistoryGap(InvariantBroken, RuntimeError):
    """The deltas after a partition's newest snapshot are gone (deltas retention shorter than the snapshot
    interval): its state cannot be restored exactly (docs/operations.md "Retention")."""


@dataclass(slots=True)
class PartitionWork:
    compactor: Compactor
    committed: int  # next input offset committed to the group (-1: none yet)
    window_started: float | None = None
    dlq: list[asyncio.Future] = field(default_factory=list)
    # end offset (read_committed) of the deltas partition when this member let the partition go: if it is
    # still the end when a rebalance gives the partition back, nobody else produced for it meanwhile
    deltas_end: int = 0
    # the partition's transactional producer (started on assignment: that start fences any older owner)
    producer: AIOKafkaProducer | None = None
    # state snapshots: offset of the last delta of this partition (-1: none), the newest snapshot's sequence
    # and chunk count, and what a restore would replay now (deltas + entries since that snapshot)
    deltas_offset: int = -1
    snapshot_sequence: int = 0
    snapshot_chunks: int = 0
    since_snapshot: int = 0
    snapshot_at: float = field(
        default_factory=time.time
    )  # wall clock of the newest snapshot (or the restore)


async def read_deltas(settings: WalduckSettings, partition: int) -> list[Delta]:
    """Every delta in partition ``partition`` of ``settings.deltas_topic``, from the beginning to the end."""
    return (await read_deltas_of(settings, [partition]))[partition][0]


async def read_deltas_of(
    settings: WalduckSettings, partitions: list[int]
) -> dict[int, tuple[list[Delta], int]]:
    """Every delta of each deltas partition in ``partitions`` with the partition's end offset, read in ONE
    pass (one consumer fetching all of them at once, not one consumer per partition in turn)."""
    read = await read_deltas_from(settings, dict.fromkeys(partitions, 0))
    return {p: (r.deltas, r.end) for p, r in read.items()}


class CompactorRunner:
    def __init__(self, settings: WalduckSettings, knobs: CompactorSettings | None = None) -> None:
        self.settings = settings
        self.knobs = knobs or CompactorSettings()
        self.work: dict[int, PartitionWork] = {}
        # state of partitions revoked by the last rebalance, reused if the next assignment gives them back
        self.parked: dict[int, PartitionWork] = {}
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.state_topic = settings.state_topic()
        # snapshots are written and read only when the state topic exists (checked at start; an upgrade that
        # has not created it yet keeps the old full-replay restore, with a warning)
        self.snapshots_on = False
        # per partition, what its last restore read (tests and `walduck bench history` read it)
        self.restore_stats: dict[int, dict[str, int]] = {}
        self.restore_seconds: float | None = None  # the last restore pass
        self.released_bytes = 0  # buffered share bytes let go since the last release_free_memory()
        self.memory_trims = 0

    # ------------------------------------------------------------------------------ rebalance
    async def assign(self, partitions: list[TopicPartition]) -> None:
        """Take each assigned partition: reuse its parked state when it is still exact, else restore it from
        the deltas it produced (every partition to restore in one pass); then seek."""
        assert self.consumer is not None
        mine = [tp for tp in partitions if tp.topic == self.settings.changes_topic]
        parked, self.parked = self.parked, {}
        # Fence first: starting the partition's transactional producer bumps its epoch, aborts any open
        # transaction of an older owner and makes that owner's later commits fail. Only then are the
        # committed offsets and the deltas read, so they include everything the old owner committed.
        producers = dict(
            zip(
                [tp.partition for tp in mine],
                await asyncio.gather(*(self._start_producer(tp.partition) for tp in mine)),
                strict=True,
            )
        )
        deltas_ends: dict[int, int] = {}
        if parked:
            deltas_tps = [TopicPartition(self.settings.deltas_topic, tp.partition) for tp in mine]
            ends = await self.consumer_end_offsets(deltas_tps)
            deltas_ends = {tp.partition: off for tp, off in ends.items()}
        to_restore: list[TopicPartition] = []
        for tp in mine:
            work = parked.pop(tp.partition, None)
            committed = await self.consumer.committed(tp)
            if (
                work is not None
                and deltas_ends.get(tp.partition) == work.deltas_end
                and (committed if committed is not None else -1) == work.committed
            ):
                # nobody produced deltas for it nor committed its offsets since this member let it go
                work.producer = producers[tp.partition]
                self.work[tp.partition] = work
                resume = work.compactor.last_offset + 1
                if resume > 0:
                    self.consumer.seek(tp, resume)
                else:
                    await self.consumer.seek_to_beginning(tp)
                COMPACTOR_PARTITION_ASSIGNMENTS.labels("kept").inc()
                log.info("partition %s kept across the rebalance, resuming at %s", tp.partition, resume)
            else:
                to_restore.append(tp)
        if to_restore:
            await self._restore(to_restore, producers)
        log.info("holding partitions %s", sorted(self.work))
        self._state_gauges()

    def transactional_id(self, partition: int) -> str:
        """One transactional id per changes partition: whoever owns the partition owns the id."""
        return f"{self.knobs.group_id}.{self.settings.changes_topic}.{partition}"

    def _new_producer(self, transactional_id: str | None = None) -> AIOKafkaProducer:
        """The compactor's producers (the DLQ one and each partition's transactional one): idempotent,
        acks=all, records up to WALDUCK_MAX_MESSAGE_BYTES."""
        return AIOKafkaProducer(
            **client_kwargs(self.settings),
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_request_size=self.settings.max_message_bytes,
        )

    async def _start_producer(self, partition: int) -> AIOKafkaProducer:
        producer = self._new_producer(transactional_id=self.transactional_id(partition))
        await start_client(producer, self.settings)
        return producer

    async def consumer_end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """End offsets of deltas partitions (a short-lived consumer: the group consumer only knows the
        changes topic)."""
        consumer = committed_reader(self.settings)
        await start_client(consumer, self.settings)
        try:
            return await consumer.end_offsets(tps)
        finally:
            await consumer.stop()

    def _accept_head(self, partition: int, head: SnapshotHead) -> bool:
        return head.same_stream(
            partition, self.settings.changes_topic, self.settings.deltas_topic, self.knobs.group_id
        )

    async def _restore(self, tps: list[TopicPartition], producers: dict[int, AIOKafkaProducer]) -> None:
        """Restore protocol (docs/compactor.md § State snapshots): (1) the newest snapshot of each state
        partition, (2) decoded (unusable: the full replay), (3) the deltas after its deltas offset (no snapshot:
        from the beginning), all partitions in one pass, (4) applied on top, the last window held back as
        before, (5) seek to the resume offset."""
        assert self.consumer is not None
        started = time.monotonic()
        partitions = [tp.partition for tp in tps]
        stored = (
            await read_snapshots(self.settings, self.state_topic, partitions, self._accept_head)
            if self.snapshots_on
            else dict.fromkeys(partitions)
        )
        bases: dict[int, tuple[SnapshotHead, Compactor]] = {}
        for p, snap in stored.items():
            if snap is None:
                continue
            try:
                bases[p] = (snap.head, decode_snapshot(snap.head, snap.chunks))
            except BadSnapshot as exc:
                log.warning(
                    "partition %s: snapshot %s unusable (%s); replaying its deltas",
                    p,
                    snap.head.sequence,
                    exc,
                )
        starts = {p: (bases[p][0].deltas_offset + 1 if p in bases else 0) for p in partitions}
        read = await read_deltas_from(self.settings, starts)
        for tp in tps:
            p = tp.partition
            got = read[p]
            head, base = bases.get(p, (None, None))
            if got.begin > got.start:
                if head is not None:
                    raise StateHistoryGap(
                        f"partition {p}: deltas from {got.start} are needed after snapshot {head.sequence} but "
                        f"the log starts at {got.begin} (deltas retention shorter than the snapshot interval)"
                    )
                log.warning("partition %s: no snapshot and deltas before %s were deleted", p, got.begin)
            restored = restore_from_deltas(p, got.deltas, base=base)
            restored.compactor.share_max_records = self.knobs.share_expire_records
            restored.compactor.share_max_age_s = self.knobs.share_expire_s
            committed = await self.consumer.committed(tp)
            if restored.resume_offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, restored.resume_offset)
            self.work[p] = PartitionWork(
                restored.compactor,
                committed if committed is not None else -1,
                deltas_end=got.end,
                producer=producers[p],
                deltas_offset=got.last_offset
                if got.last_offset >= 0
                else (head.deltas_offset if head else -1),
                snapshot_sequence=head.sequence if head else 0,
                snapshot_chunks=head.chunks if head else 0,
                since_snapshot=sum(1 + d.entry_count for d in got.deltas),
                snapshot_at=parse_iso(head.created_at).timestamp() if head else time.time(),
            )
            chunks = head.chunks + 1 if head else 0
            COMPACTOR_RESTORE_RECORDS.labels("snapshot").inc(chunks)
            COMPACTOR_RESTORE_RECORDS.labels("tail" if head else "replay").inc(len(got.deltas))
            self.restore_stats[p] = {
                "snapshot_records": chunks,
                "snapshot_entries": head.entries if head else 0,
                "deltas": len(got.deltas),
                "deltas_from": got.start,
            }
            COMPACTOR_PARTITION_ASSIGNMENTS.labels("restored").inc()
            log.info(
                "partition %s restored from %s + %d deltas from offset %d, resuming at %s (committed %s)",
                p,
                f"snapshot {head.sequence} ({head.entries} entries, {chunks} records)"
                if head
                else "no snapshot",
                len(got.deltas),
                got.start,
                restored.resume_offset,
                committed,
            )
        elapsed = time.monotonic() - started
        self.restore_seconds = elapsed
        COMPACTOR_RESTORE_DURATION.observe(elapsed)
        log.info("restore pass: %d partitions in %.2f s", len(tps), elapsed)

    async def revoke(self, partitions: list[TopicPartition]) -> None:
        """Park revoked partitions' state (the next assignment may give them back); the lock waits for an
        in-flight flush to be acknowledged first."""
        async with self.lock:
            released: list[PartitionWork] = []
            for tp in partitions:
                work = self.work.pop(tp.partition, None)
                if work is not None and tp.topic == self.settings.changes_topic:
                    self.parked[tp.partition] = work
                    released.append(work)
            if self.parked:
                with contextlib.suppress(Exception):
                    ends = await self.consumer_end_offsets(
                        [TopicPartition(self.settings.deltas_topic, p) for p in self.parked]
                    )
                    for tp, end in ends.items():
                        self.parked[tp.partition].deltas_end = end
            await asyncio.gather(*(self._stop_producer(w) for w in released))
        self._state_gauges()

    @staticmethod
    async def _stop_producer(work: PartitionWork) -> None:
        producer, work.producer = work.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await producer.stop()

    # ------------------------------------------------------------------------------ main loop
    async def run(self) -> None:
        knobs = self.knobs
        runner = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                await runner.revoke(list(revoked))

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                await runner.assign(list(assigned))

        self.producer = self._new_producer()
        session_timeout_ms = knobs.resolved_session_timeout_ms()
        log.info(
            "group %s as %s, session timeout %d ms",
            knobs.group_id,
            f"static member {knobs.group_instance_id!r}" if knobs.static_member else "a dynamic member",
            session_timeout_ms,
        )
        self.consumer = AIOKafkaConsumer(
            **client_kwargs(self.settings),
            group_id=knobs.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=knobs.max_poll_records,
            max_partition_fetch_bytes=self.settings.max_message_bytes,
            group_instance_id=knobs.group_instance_id or None,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(min(session_timeout_ms // 4, 3000), 500),
        )
        try:
            await start_client(self.producer, self.settings)
            await start_client(self.consumer, self.settings)
            await self._check_state_topic()
            self.consumer.subscribe([self.settings.changes_topic], listener=Listener())
            while not self.stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=knobs.flush_interval_ms)
                async with self.lock:
                    for tp, msgs in batch.items():
                        work = self.work.get(tp.partition)
                        if work is None:
                            continue
                        for msg in msgs:
                            self._feed(tp, work, msg)
                    self._expire_shares()
                    await self._flush_due()
                self._release_memory()
            if self.knobs.snapshot_on_stop:
                await self._final_snapshots()
        finally:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            for work in [*self.work.values(), *self.parked.values()]:
                await self._stop_producer(work)
            with contextlib.suppress(Exception):
                await self.producer.stop()

    async def _final_snapshots(self) -> None:
        """A clean stop (SIGTERM: a rollout, a scale-down) seals what it can and snapshots every partition at
        rest with deltas since its last snapshot, so the next owner's restore replays nothing."""
        if not self.snapshots_on:
            return
        async with self.lock:
            held = [(p, w) for p, w in self.work.items() if w.producer is not None]
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.knobs.transaction_timeout_s):
                    await self.flush_partitions(held, final=True)

    async def _check_state_topic(self) -> None:
        assert self.consumer is not None
        if not self.knobs.snapshots:
            log.info("state snapshots off (WALDUCK_COMPACTOR_SNAPSHOTS=false): restores replay every delta")
            return
        self.snapshots_on = self.state_topic in await self.consumer.topics()
        if not self.snapshots_on:
            log.warning(
                "state topic %s does not exist (run `walduck kafka ensure-topics`): no snapshots, restores "
                "replay the whole deltas partition",
                self.state_topic,
            )

    def _feed(self, tp: TopicPartition, work: PartitionWork, msg) -> None:
        compactor = work.compactor
        if msg.offset <= compactor.last_offset:
            return  # fetched before the restore's seek took effect
        if work.window_started is None:
            work.window_started = time.monotonic()
        COMPACTOR_RECORDS_IN.inc()
        try:
            record = ChangeRecord.from_bytes(msg.value, self.settings.max_message_bytes)
        except MalformedRecord as exc:
            # its slot in its transaction share is still accounted when the bytes name it (issue 16, finding 6)
            # an oversize stub names its dataset: that dataset's delta asks contexts to rebuild it (issue 16)
            resync = "oversize_record" if exc.reason.startswith(OVERSIZE_REASON) else None
            compactor.skip(msg.offset, share_position(msg.value), resync=resync)
            self._dlq(work, tp, msg.offset, msg.key, msg.value, "malformed", exc.reason)
            return
        try:
            compactor.feed(record, msg.offset, msg.value)
        except InvalidChange as exc:
            self._dlq(work, tp, msg.offset, msg.key, msg.value, "invalid_change", exc.reason)
        for rejected in compactor.drain_rejected():
            self._dlq_rejected(work, tp, rejected)

    def _release_memory(self) -> None:
        """After big transaction shares were applied (or expired), hand the memory of their buffered bytes
        back to the OS (:data:`TRIM_AFTER_BYTES`)."""
        self.released_bytes += sum(w.compactor.take_released() for w in self.work.values())
        if self.released_bytes >= TRIM_AFTER_BYTES:
            self.released_bytes = 0
            if release_free_memory():
                self.memory_trims += 1

    def _expire_shares(self) -> None:
        """Incomplete transaction shares past their bound go to the DLQ (wall clock; a restored window
        re-processed after a restart expires them again at its boundary, see pipeline/compaction.py)."""
        now = time.time()
        for partition, work in self.work.items():
            if work.compactor.clean or not work.compactor.expire(now):
                continue
            tp = TopicPartition(self.settings.changes_topic, partition)
            for rejected in work.compactor.drain_rejected():
                self._dlq_rejected(work, tp, rejected)

    def _dlq_rejected(self, work: PartitionWork, tp: TopicPartition, rejected: Rejected) -> None:
        raw = rejected.record.to_bytes() if rejected.record is not None else b""
        key = rejected.record.kafka_key() if rejected.record is not None else None
        self._dlq(work, tp, rejected.offset, key, raw, rejected.reason_class, rejected.reason)

    def _dlq(
        self, work: PartitionWork, tp: TopicPartition, offset: int, key, raw, reason_class: str, reason: str
    ) -> None:
        assert self.producer is not None
        DLQ_RECORDS.labels(COMPONENT, reason_class).inc()
        log.warning("DLQ %s[%s]@%s: %s", tp.topic, tp.partition, offset, reason)
        letter = DeadLetter(
            COMPONENT, reason_class, f"{tp.topic}/{tp.partition}@{offset}", raw or b"", reason, key
        )
        key, value, headers = letter.envelope()
        work.dlq.append(
            asyncio.ensure_future(
                self.producer.send(self.settings.dlq_topic, value=value, key=key, headers=headers)
            )
        )

    async def _flush_due(self) -> None:
        now = time.monotonic()
        due = [
            (partition, work)
            for partition, work in list(self.work.items())
            if work.window_started is not None
            and work.producer is not None
            and (
                (now - work.window_started) * 1000 >= self.knobs.flush_interval_ms
                or work.compactor.window_records >= self.knobs.flush_max_changes
            )
        ]
        if due:
            await self.flush_partitions(due)

    async def flush_partitions(self, due: list[tuple[int, PartitionWork]], final: bool = False) -> None:
        """The commit protocol for the changes partitions whose window is due (called with ``self.lock``
        held). Every partition's deltas are produced before any acknowledgement is awaited, and the input
        offsets of all of them go to Kafka in ONE commit once every delta and DLQ record of all of them is
        acknowledged: a partition's deltas never wait for another partition's produce-ack-commit cycle."""
        assert self.producer is not None and self.consumer is not None
        # 1. Seal: take the deltas of every window that holds only whole transaction shares. A share still
        #    missing records stays buffered, and so does every offset from its first record on.
        sealed = [(partition, work, work.compactor.flush()) for partition, work in due]
        # 2-4. One Kafka transaction per partition, all partitions concurrently (a partition's deltas never
        #    wait for another partition's round trips): its deltas + the input offset after its last sealed
        #    window, committed together or not at all.
        results = await asyncio.gather(
            *(self._commit_window(partition, work, deltas, final) for partition, work, deltas in sealed)
        )
        sealed = [entry for entry, kept in zip(sealed, results, strict=True) if kept]
        # 5. Metrics: deltas out, compaction ratio counters, latency from the window's first record.
        for partition, work, deltas in sealed:
            for d in deltas:
                COMPACTOR_DELTAS_OUT.labels(d.kind.value).inc()
                COMPACTOR_RAW_CHANGES.inc(d.raw_changes)
                COMPACTOR_DELTA_ENTRIES.inc(d.entry_count)
            if work.window_started is not None and work.compactor.clean:
                COMPACTOR_FLUSH_LATENCY.observe(time.monotonic() - work.window_started)
                work.window_started = None
            with contextlib.suppress(Exception):
                tp = TopicPartition(self.settings.changes_topic, partition)
                high = self.consumer.highwater(tp)
                if high is not None:
                    next_offset = work.compactor.covered_to + 1
                    KAFKA_CONSUMER_LAG.labels(COMPONENT, tp.topic, str(partition)).set(
                        max(high - next_offset, 0)
                    )
        self._state_gauges()

    async def _commit_window(
        self, partition: int, work: PartitionWork, deltas: list[Delta], final: bool = False
    ) -> bool:
        """Steps 2-4 of the commit protocol for one partition. False when this member was fenced (another
        member owns the partition now): its transaction is aborted by the broker, its state dropped."""
        assert work.producer is not None
        # 4'. The input offset after the last sealed window never goes backwards: a regression means the
        #     compactor and the group disagree about what was processed.
        next_offset = work.compactor.covered_to + 1
        offset: int | None = None
        if next_offset > work.committed:
            if partition not in self.work or self.work[partition] is not work:
                raise OffsetRegression(f"partition {partition} was revoked during its flush")
            offset = next_offset
        elif next_offset < work.committed and deltas:
            raise OffsetRegression(
                f"partition {partition}: sealed through {next_offset - 1} < {work.committed}"
            )
        cost = sum(1 + d.entry_count for d in deltas)
        due = final or snapshot_due(
            work.since_snapshot + cost,
            work.compactor.state_partitions,
            self.knobs.snapshot_min_records,
            self.knobs.snapshot_ratio,
            age_s=time.time() - work.snapshot_at,
            max_age_s=self.knobs.snapshot_max_age_s,
        )
        # a final snapshot (clean stop) only when something was produced since the last one
        snapshot = (
            self.snapshots_on
            and due
            and work.compactor.at_rest
            and (not final or work.since_snapshot + cost > 0)
        )
        if not deltas and offset is None and not work.dlq and not snapshot:
            return True
        producer = work.producer
        try:
            async with asyncio.timeout(self.knobs.transaction_timeout_s):
                written = await self._transaction(producer, partition, work, deltas, offset, snapshot)
        except (ProducerFenced, InvalidProducerEpoch, TimeoutError) as exc:
            # A newer owner started this partition's transactional id (or the broker never answered: the
            # transaction times out and is aborted): nothing of this window is visible to read_committed
            # readers. Drop the (stale) state; the group gives the partition back or elsewhere.
            COMPACTOR_FENCED.inc()
            COMPACTOR_COMMITS_LOST.inc()
            log.warning("partition %s: fenced by a newer owner, its window is discarded: %r", partition, exc)
            if self.work.get(partition) is work:
                del self.work[partition]
            self.parked.pop(partition, None)
            await self._stop_producer(work)
            return False
        work.dlq.clear()
        if offset is not None:
            work.committed = offset
        last_delta, head, size = written
        work.deltas_offset = max(work.deltas_offset, last_delta)
        work.since_snapshot += cost
        if head is not None:
            work.snapshot_sequence, work.snapshot_chunks, work.since_snapshot = head.sequence, head.chunks, 0
            work.snapshot_at = time.time()
            COMPACTOR_SNAPSHOTS.inc()
            COMPACTOR_SNAPSHOT_BYTES.inc(size)
            log.info(
                "partition %s: snapshot %d committed (%d entries, %d chunks, %d bytes, through input offset %d)",
                partition,
                head.sequence,
                head.entries,
                head.chunks,
                size,
                head.covered_to,
            )
        return True

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        partition: int,
        work: PartitionWork,
        deltas: list[Delta],
        offset: int | None,
        snapshot: bool = False,
    ) -> tuple[int, SnapshotHead | None, int]:
        """One window's transaction; returns the offset of its last delta (-1: none) and the snapshot head
        written in it (with its size in bytes), if any."""
        await producer.begin_transaction()
        try:
            # 2. Produce each delta to deltas partition == changes partition (co-partitioned), key
            #    <dataset>/<shard>, in the compactor's deterministic order.
            sends = []
            for d in deltas:
                raw = d.to_bytes()
                # a big window's payloads (an initial snapshot's: ~165 MB per partition at 1M rows) are freed amid
                # live allocations once acknowledged: counted for release_free_memory
                self.released_bytes += len(raw)
                sends.append(
                    await producer.send(
                        self.settings.deltas_topic, value=raw, key=d.kafka_key(), partition=partition
                    )
                )
            # 3. Every delta and DLQ record acknowledged, else UnackedDelta and the transaction aborts
            #    (a restart restores from the committed deltas and re-processes the window).
            acks = await asyncio.gather(*sends, *work.dlq, return_exceptions=True)
            acks += await asyncio.gather(
                *(f.result() for f in work.dlq if not f.exception()), return_exceptions=True
            )
            for ack in acks:
                if isinstance(ack, ProducerFenced | InvalidProducerEpoch):
                    raise ack
                if isinstance(ack, BaseException):
                    raise UnackedDelta(f"partition {partition}: {ack!r}") from ack
            last_delta = max((a.offset for a in acks[: len(sends)]), default=-1)
            # 3'. A state snapshot when due: the state after this window (at rest), with the offset of the
            #     window's last delta, in the same transaction (pipeline/snapshot.py).
            head, size = (
                await self._write_snapshot(producer, partition, work, max(last_delta, work.deltas_offset))
                if snapshot
                else (None, 0)
            )
            # 4. The input offset joins the same transaction.
            if offset is not None:
                await producer.send_offsets_to_transaction(
                    {TopicPartition(self.settings.changes_topic, partition): offset}, self.knobs.group_id
                )
            await producer.commit_transaction()
            return last_delta, head, size
        except (ProducerFenced, InvalidProducerEpoch):
            raise
        except Exception:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise

    async def _write_snapshot(
        self, producer: AIOKafkaProducer, partition: int, work: PartitionWork, deltas_offset: int
    ) -> tuple[SnapshotHead, int]:
        """Chunks, tombstones for the previous snapshot's chunk keys this one does not use, then the head (it
        names the first chunk's offset), all to state partition ``partition`` inside the open transaction."""
        compactor = work.compactor
        sequence = work.snapshot_sequence + 1
        # the state is not fed meanwhile (the runner's lock is held); encoding off the loop keeps heartbeats going
        chunks = await asyncio.to_thread(encode_chunks, compactor, sequence)
        topic = self.state_topic
        sends = [
            await producer.send(topic, value=chunk, key=chunk_key(i), partition=partition)
            for i, chunk in enumerate(chunks)
        ]
        sends += [
            await producer.send(topic, value=None, key=chunk_key(i), partition=partition)
            for i in range(len(chunks), work.snapshot_chunks)
        ]
        acks = await asyncio.gather(*sends)
        head = SnapshotHead(
            src_partition=partition,
            changes_topic=self.settings.changes_topic,
            deltas_topic=self.settings.deltas_topic,
            group_id=self.knobs.group_id,
            sequence=sequence,
            covered_to=compactor.covered_to,
            deltas_offset=deltas_offset,
            chunks=len(chunks),
            first_offset=acks[0].offset,
            entries=compactor.state_partitions,
            created_at=iso(utcnow()),
        )
        raw = head.to_bytes()
        await (await producer.send(topic, value=raw, key=HEAD_KEY, partition=partition))
        size = sum(len(c) for c in chunks) + len(raw)
        self.released_bytes += size  # freed after the commit, like a window's deltas (release_free_memory)
        return head, size

    def _state_gauges(self) -> None:
        COMPACTOR_ASSIGNED_PARTITIONS.set(len(self.work))
        COMPACTOR_STATE_SHARDS.set(sum(len(w.compactor.shards) for w in self.work.values()))
        COMPACTOR_STATE_PARTITIONS.set(sum(w.compactor.state_partitions for w in self.work.values()))
