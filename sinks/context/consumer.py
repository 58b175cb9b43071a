"""DeltaConsumer: reads every partition of the deltas topic into one ContextStore.

1. Manual assignment of ALL partitions (no consumer group: every query-service replica holds every shard).
2. A shard not bootstrapped yet (new or wiped context), or whose stored offset lies below its partition's log
   start offset (history deleted by retention), is built from PostgreSQL first: the partition's end offset E is
   recorded, THEN the snapshot is read and bulk-loaded, E-1 is stored as the shard's deltas offset
   (``sinks/context/build.py``: why nothing after the snapshot is missed). A fetch answered OffsetOutOfRange
   while running does the same for that partition (``walduck_rebuilds_total{scope="shard"}``), and so does a
   stored offset past the partition's end (a recreated topic, or a context snapshot published for another).
   ``WALDUCK_CONTEXT_BOOTSTRAP=replay`` replays a new shard's partition from offset 0 instead (the old path).
   Then each partition is sought to the stored deltas offset + 1.
3. Each record is decoded (:meth:`Delta.from_bytes`); malformed ones go to the DLQ with the reason,
   counted in ``walduck_dlq_records_total{component="context"}``; the stream continues.
4. Deltas are applied in ONE writer thread (a dedicated single-thread executor), in partition order;
   the store writes offsets/LSN in the same DuckDB transaction as the change. The deltas of one poll
   (every partition) go to :meth:`ContextStore.apply_batch` together (partition-only deltas and heartbeats
   share a transaction), so a consumer that fell behind catches up in few transactions; if that batch
   fails, its deltas are applied one by one, so only the failing delta goes to the DLQ.
5. A shard counts as bootstrapped once built from PostgreSQL (replay mode: once it reached the partition's
   end offset seen at start). The deltas topic is read with ``isolation_level="read_committed"``
   (:func:`walduck.kafka_readers.committed_reader`).
Offsets are never committed to Kafka: the context file is the source of truth for where to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from sinks.context.store import ContextStore
from walduck import metrics
from walduck.deltas import Delta
from walduck.dlq import DeadLetter
from walduck.kafka_readers import committed_reader
from walduck.kafka_security import client_kwargs, start_client
from walduck.records import MalformedRecord

log = logging.getLogger(__name__)
COMPONENT = "context"


class DeltaConsumer:
    def __init__(self, store: ContextStore, bootstrap: str | None = None, topic: str | None = None) -> None:
        self.store = store
        self.bootstrap = bootstrap or store.walduck.kafka_bootstrap
        self.topic = topic or store.walduck.deltas_topic
        self.dlq_topic = store.walduck.dlq_topic
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="context-writer")
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._bootstrap_targets: dict[int, int] = {}
        self.applied = 0
        self.duplicates = 0
        self.dead_lettered = 0

    async def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                await self._run_once()
                backoff = 0.5
            except KafkaError as exc:
                log.warning("deltas consumer: Kafka error %s; retrying in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                await self._close_clients()
        self._executor.shutdown(wait=True)

    async def stop(self) -> None:
        self._stop.set()

    async def _close_clients(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._consumer = self._producer = None

    def _client_kwargs(self) -> dict[str, Any]:
        """The store's Kafka security settings, with this consumer's bootstrap address."""
        return {**client_kwargs(self.store.walduck), "bootstrap_servers": self.bootstrap}

    async def _run_once(self) -> None:
        settings = self.store.settings
        consumer = committed_reader(
            self.store.walduck,
            bootstrap_servers=self.bootstrap,
            # never silently skip history deleted by retention: OffsetOutOfRange rebuilds the shard instead
            auto_offset_reset="none",
            max_poll_records=settings.consumer_max_records,
        )
        self._consumer = consumer
        await start_client(consumer, self.store.walduck)
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            raise KafkaError(f"topic {self.topic} has no partitions (yet)")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        loop = asyncio.get_running_loop()
        await self._bootstrap(loop, consumer, tps)
        self._producer = AIOKafkaProducer(**self._client_kwargs())
        await start_client(self._producer, self.store.walduck)
        last_delta = time.monotonic()
        checkpoint_due = False  # changes applied since the last idle checkpoint
        while not self._stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=settings.consumer_poll_ms)
            except OffsetOutOfRangeError as exc:
                # the next offset to read was deleted by retention: rebuild those shards from PostgreSQL
                lost = sorted(exc.args[0]) if exc.args and isinstance(exc.args[0], dict) else tps
                log.warning("deltas %s: offsets out of range (deleted by retention?); rebuilding", lost)
                await self._bootstrap(loop, consumer, tps, force={tp.partition for tp in lost})
                continue
            if any(batches.values()):
                last_delta = time.monotonic()
                checkpoint_due = True
            elif (
                checkpoint_due
                and settings.checkpoint_idle_s > 0
                and time.monotonic() - last_delta >= settings.checkpoint_idle_s
            ):
                # idle: fold DuckDB's WAL into the file now, so the next apply does not pay for it
                done = await loop.run_in_executor(
                    self._executor, self.store.checkpoint, settings.checkpoint_idle_min_bytes
                )
                checkpoint_due = done is False  # refused by DuckDB: try again at the next idle poll
            await self._handle_batch(loop, [(tp.partition, records) for tp, records in batches.items()])
            for tp, records in batches.items():
                if records and self._check_bootstrapped(tp.partition, records[-1].offset + 1):
                    await loop.run_in_executor(self._executor, self.store.mark_bootstrapped, tp.partition)
            await loop.run_in_executor(self._executor, self.store.refresh_views)
            self._update_lag(consumer, tps)

    async def _bootstrap(
        self,
        loop: asyncio.AbstractEventLoop,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        force: set[int] | None = None,
    ) -> None:
        """Seek every partition to its stored offset + 1, building from PostgreSQL first the shards that need
        it (not bootstrapped, history below the log start, or ``force``d). E is read BEFORE the snapshot."""
        progress = self.store.progress()
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        # without a catalog DSN (tests feeding deltas by hand) there is nothing to build from: replay
        replay = self.store.settings.sink_bootstrap == "replay" or not self.store.can_read_catalog()
        todo: dict[int, int] = {}
        for tp in tps:
            prog = progress.get(tp.partition)
            stored = prog.deltas_offset if prog else -1
            booted = bool(prog and prog.bootstrapped)
            truncated = stored + 1 < begins[tp]
            # past the end: the offsets name another topic of this name (recreated; a context snapshot
            # published for it): its history is not this partition's
            ahead = booted and stored + 1 > ends[tp]
            if ahead:
                log.warning(
                    "deltas %s: stored offset %d is past the end offset %d (the topic was recreated?);"
                    " rebuilding the shard from PostgreSQL",
                    tp.partition,
                    stored,
                    ends[tp],
                )
            elif truncated and booted:
                log.warning(
                    "deltas %s: stored offset %d is below the log start offset %d (history deleted by"
                    " retention); rebuilding the shard from PostgreSQL",
                    tp.partition,
                    stored,
                    begins[tp],
                )
            if (force and tp.partition in force) or truncated or ahead or not (booted or replay):
                todo[tp.partition] = ends[tp]
        if todo:
            try:
                await loop.run_in_executor(self._executor, self.store.bootstrap, todo)
            except Exception:
                metrics.REBUILDS.labels(scope="shard", result="error").inc(len(todo))
                raise
        progress = self.store.progress()
        for tp in tps:
            prog = progress.get(tp.partition)
            stored = prog.deltas_offset if prog else -1
            consumer.seek(tp, stored + 1)
            if replay and not (prog and prog.bootstrapped):
                self._bootstrap_targets[tp.partition] = ends[tp]
                if self._check_bootstrapped(tp.partition, stored + 1):
                    self.store.mark_bootstrapped(tp.partition)

    async def _handle_batch(
        self, loop: asyncio.AbstractEventLoop, polled: list[tuple[int, list[Any]]]
    ) -> None:
        """The records of one poll (per partition, in offset order): malformed ones to the DLQ, the rest
        applied in one :meth:`ContextStore.apply_batch` call (one by one if that fails)."""
        decoded: list[tuple[Delta, int, int, bytes | None, bytes | None]] = []
        for partition, records in polled:
            for rec in records:
                try:
                    decoded.append(
                        (
                            Delta.from_bytes(rec.value, self.store.walduck.max_message_bytes),
                            partition,
                            rec.offset,
                            rec.value,
                            rec.key,
                        )
                    )
                except MalformedRecord as exc:
                    await self._dead_letter(partition, rec.offset, rec.value, rec.key, "malformed", str(exc))
        if not decoded:
            return
        items = [(delta, partition, offset) for delta, partition, offset, _, _ in decoded]
        try:
            results = await loop.run_in_executor(self._executor, self.store.apply_batch, items)
        except Exception:
            log.warning(
                "batched apply of %d deltas failed; applying them one by one", len(items), exc_info=True
            )
            for item in decoded:
                await self._apply_one(loop, *item)
            return
        applied = sum(results)
        self.applied += applied
        self.duplicates += len(results) - applied
        self._resync([delta for delta, _, _ in items])

    def _resync(self, deltas: list[Delta]) -> None:
        """A delta saying a change of its dataset could not travel (an oversize stub): rebuild that dataset from
        PostgreSQL, queued (merged with a pending one) after the delta's own apply; re-deliveries ask again,
        harmlessly."""
        for delta in deltas:
            if delta.resync and delta.dataset_id:
                log.warning(
                    "dataset %s: %s upstream; rebuilding it from PostgreSQL", delta.dataset_id, delta.resync
                )
                self.store.request_rebuild(delta.dataset_id, f"resync: {delta.resync}")

    async def _apply_one(
        self,
        loop: asyncio.AbstractEventLoop,
        delta: Delta,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None,
    ) -> None:
        try:
            applied = await loop.run_in_executor(self._executor, self.store.apply, delta, partition, offset)
        except Exception as exc:  # an apply that fails never stops the stream; the shard shows last_error
            log.exception("apply of deltas %s@%s failed", partition, offset)
            self.store.set_error(partition, f"offset {offset}: {type(exc).__name__}: {exc}")
            await self._dead_letter(partition, offset, value, key, "apply_error", str(exc))
            return
        if applied:
            self.applied += 1
        else:
            self.duplicates += 1
        self._resync([delta])

    async def _dead_letter(
        self, partition: int, offset: int, value: bytes | None, key: bytes | None, reason: str, detail: str
    ) -> None:
        self.dead_lettered += 1
        metrics.DLQ_RECORDS.labels(component=COMPONENT, reason=reason).inc()
        log.warning("deltas %s@%s -> DLQ (%s): %s", partition, offset, reason, detail)
        if self._producer is None:
            return
        letter = DeadLetter(
            COMPONENT, reason, f"{self.topic}/{partition}@{offset}", value or b"", detail, key
        )
        key, value, headers = letter.envelope()
        try:
            await self._producer.send_and_wait(self.dlq_topic, value=value, key=key, headers=headers)
        except KafkaError as exc:
            log.error("could not write to DLQ %s: %s", self.dlq_topic, exc)

    def _check_bootstrapped(self, partition: int, next_offset: int) -> bool:
        """True once a shard reached the end offset its partition had when consuming started."""
        target = self._bootstrap_targets.get(partition)
        if target is not None and next_offset >= target:
            self._bootstrap_targets.pop(partition, None)
            return True
        return False

    def _update_lag(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        progress = self.store.progress()
        for tp in tps:
            high = consumer.highwater(tp)
            if high is None:
                continue
            stored = progress.get(tp.partition)
            lag = max(high - ((stored.deltas_offset if stored else -1) + 1), 0)
            metrics.KAFKA_CONSUMER_LAG.labels(
                component=COMPONENT, topic=self.topic, partition=str(tp.partition)
            ).set(lag)
