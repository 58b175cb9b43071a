"""DeltaConsumer: reads every partition of the deltas topic into one ContextStore.

1. Manual assignment of ALL partitions (no consumer group: every query-service replica holds every shard).
2. Each partition is sought to the deltas offset stored in the context + 1 (0 for a new or wiped shard:
   bootstrap = replaying the partition, whose head holds the connector's initial snapshot).
3. Each record is decoded (:meth:`Delta.from_bytes`); malformed ones go to the DLQ with the reason,
   counted in ``walduck_dlq_records_total{component="context"}``; the stream continues.
4. Deltas are applied in ONE writer thread (a dedicated single-thread executor), in partition order;
   the store writes offsets/LSN in the same DuckDB transaction as the change. The deltas of one poll
   (every partition) go to :meth:`ContextStore.apply_batch` together (partition-only deltas and heartbeats
   share a transaction), so a consumer that fell behind catches up in few transactions; if that batch
   fails, its deltas are applied one by one, so only the failing delta goes to the DLQ.
5. A shard counts as bootstrapped once it reached the partition's end offset seen at start.
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
from aiokafka.errors import KafkaError

from sinks.context.store import ContextStore
from walduck import metrics
from walduck.deltas import Delta
from walduck.dlq import DeadLetter
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
        consumer = AIOKafkaConsumer(
            **self._client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # the compactor writes deltas in Kafka transactions
            max_poll_records=settings.consumer_max_records,
            max_partition_fetch_bytes=self.store.walduck.max_message_bytes,
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
        progress = self.store.progress()
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            stored = progress[tp.partition].deltas_offset if tp.partition in progress else -1
            consumer.seek(tp, stored + 1)
            if not (progress.get(tp.partition) and progress[tp.partition].bootstrapped):
                self._bootstrap_targets[tp.partition] = ends[tp]
                if self._check_bootstrapped(tp.partition, stored + 1):
                    self.store.mark_bootstrapped(tp.partition)
        self._producer = AIOKafkaProducer(**self._client_kwargs())
        await start_client(self._producer, self.store.walduck)
        loop = asyncio.get_running_loop()
        last_delta = time.monotonic()
        checkpoint_due = False  # changes applied since the last idle checkpoint
        while not self._stop.is_set():
            batches = await consumer.getmany(timeout_ms=settings.consumer_poll_ms)
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
