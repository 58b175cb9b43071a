"""Kafka layer: an idempotent aiokafka producer for change records and a DLQ publisher.

``publish(records)`` appends records to per-partition record batches and returns an awaitable that
completes when Kafka acknowledged all of them (``acks=all``, idempotent: per-partition order survives
retries); ``flush()`` hands the open batches to the producer.
Dataset records are keyed by ``dataset_id`` (default murmur2 partitioner); records without a
dataset (storage targets, truncates) and heartbeats/snapshot markers go to every partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder

from connectors.transactions import Rejected
from walduck.config import DEFAULT_MAX_MESSAGE_BYTES, WalduckSettings
from walduck.dlq import DeadLetter
from walduck.kafka_security import client_kwargs
from walduck.lsn import format_lsn
from walduck.metrics import CONNECTOR_OVERSIZE_RECORDS, DLQ_RECORDS
from walduck.records import ChangeRecord, Kind, partition_of
from walduck.sizepolicy import fit_record

log = logging.getLogger(__name__)


def best_compression() -> str:
    """zstd when aiokafka's codec library (cramjam) is installed, gzip otherwise."""
    from aiokafka.codec import has_zstd

    return "zstd" if has_zstd() else "gzip"


def make_producer(settings: WalduckSettings, client_id: str = "walduck-connector") -> AIOKafkaProducer:
    """The connector's producer for ``settings.kafka_bootstrap`` with its security settings;
    ``max_request_size`` is the one size limit, ``settings.max_message_bytes`` (:mod:`walduck.sizepolicy`)."""
    return AIOKafkaProducer(
        **client_kwargs(settings),
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        compression_type=best_compression(),
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=settings.max_message_bytes,
        request_timeout_ms=30_000,
    )


def encode_record(record: ChangeRecord, limit: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """The Kafka value of a change record (:meth:`ChangeRecord.to_bytes`), made to fit ``limit`` bytes by the
    size policy (:func:`walduck.sizepolicy.fit_record`) when it would not."""
    value, strategy = fit_record(record, limit)
    if strategy is not None:
        CONNECTOR_OVERSIZE_RECORDS.labels(strategy=strategy).inc()
        log.warning(
            "%s %s record of %s (key %s) over %d bytes: %s",
            record.table,
            record.op,
            record.dataset_id,
            record.key,
            limit,
            strategy,
        )
    return value


def is_broadcast(record: ChangeRecord) -> bool:
    return record.kind is not Kind.CHANGE or record.dataset_id is None


class _OpenBatch:
    """A record batch for one partition still being filled, and the future its records' acks hang on."""

    __slots__ = ("acked", "builder")

    def __init__(self, builder: BatchBuilder, acked: asyncio.Future[None]) -> None:
        self.builder = builder
        self.acked = acked


class ChangePublisher:
    """Publishes change records to the changes topic, one Kafka record per change record.

    Records are appended to one open record batch per partition (aiokafka's ``create_batch``/``send_batch``:
    no per-record coroutine, partition looked up once per key) and a batch is handed to the producer when it
    is full or at :meth:`flush`. The delivery loop flushes whenever it has no more WAL buffered, so batches
    are as large as the stream is fast and no record waits for a timer.
    """

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.producer = producer
        self.topic = topic
        # a record batch adds ~100 bytes of framing to one record: keep the record itself below the limit
        self.record_limit = max_message_bytes - 1024
        self._partitions: list[int] | None = None
        self._partition_of: dict[bytes, int] = {}
        self._open: dict[int, _OpenBatch] = {}

    async def partitions(self) -> list[int]:
        if self._partitions is None:
            found = await self.producer.partitions_for(self.topic)
            if not found:
                raise RuntimeError(f"topic {self.topic!r} has no partitions")
            self._partitions = sorted(found)
        return self._partitions

    def _partition(self, key: bytes, parts: list[int]) -> int:
        p = self._partition_of.get(key)
        if p is None:
            p = self._partition_of[key] = parts[partition_of(key, len(parts))]
        return p

    def _append_now(self, partition: int, key: bytes, value: bytes) -> asyncio.Future[None] | None:
        """Append to the partition's open batch (opening one if needed); ``None`` when it is full."""
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = _OpenBatch(
                self.producer.create_batch(), asyncio.get_running_loop().create_future()
            )
        if batch.builder.append(timestamp=None, key=key, value=value) is None:
            return None
        return batch.acked

    async def _append(self, partition: int, key: bytes, value: bytes) -> asyncio.Future[None]:
        acked = self._append_now(partition, key, value)
        if acked is None:  # full: hand it over; a fresh batch always takes one record
            await self._submit(partition)
            acked = self._append_now(partition, key, value)
            assert acked is not None
        return acked

    async def _submit(self, partition: int) -> None:
        batch = self._open.pop(partition)
        batch.builder.close()
        try:
            sent = await self.producer.send_batch(batch.builder, self.topic, partition=partition)
        except BaseException as exc:
            batch.acked.set_exception(exc)
            raise
        sent.add_done_callback(lambda f, acked=batch.acked: _settle(acked, f))

    async def flush(self) -> None:
        """Hand every open batch to the producer (their acks follow when Kafka has them)."""
        for partition in list(self._open):
            await self._submit(partition)

    async def publish(self, records: Iterable[ChangeRecord], flush: bool = True) -> Awaitable[int]:
        """Append every record (in order); the returned awaitable completes, with the number of Kafka
        messages, once Kafka acknowledged all of them (and raises if any failed). With ``flush=False`` the
        caller must :meth:`flush` before awaiting it."""
        parts = await self.partitions()
        pending: set[asyncio.Future[None]] = set()
        messages = 0
        for record in records:
            value = encode_record(record, self.record_limit)
            key = record.kafka_key()
            if is_broadcast(record):
                for p in parts:
                    pending.add(await self._append(p, key, value))
                messages += len(parts)
            else:
                partition = self._partition(key, parts)
                acked = self._append_now(partition, key, value)  # no coroutine per record
                pending.add(acked if acked is not None else await self._append(partition, key, value))
                messages += 1
        if flush:
            await self.flush()

        async def acked() -> int:
            for future in pending:
                await future
            return messages

        return acked()

    def abort(self, exc: BaseException) -> None:
        """Fail the acks of batches never handed to the producer (the session is ending)."""
        for batch in self._open.values():
            if not batch.acked.done():
                batch.acked.set_exception(exc)
        self._open.clear()


def _settle(acked: asyncio.Future[None], sent: asyncio.Future[object]) -> None:
    if acked.done():
        return
    if sent.cancelled():
        acked.set_exception(KafkaError("record batch cancelled"))
    elif sent.exception() is not None:
        acked.set_exception(sent.exception())  # type: ignore[arg-type]
    else:
        acked.set_result(None)


class DeadLetterPublisher:
    """Undecodable rows -> ``settings.dlq_topic`` as dead letters (``walduck.dlq``: the raw pgoutput message,
    the reason, and table/xid/commit LSN headers)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, component: str = "connector") -> None:
        self.producer = producer
        self.topic = topic
        self.component = component

    async def publish(self, rejected: Iterable[Rejected]) -> int:
        futures = []
        for r in rejected:
            extra = {"table": r.table or ""}
            if r.xid is not None:
                extra["xid"] = str(r.xid)
            if r.commit_lsn is not None:
                extra["commit_lsn"] = format_lsn(r.commit_lsn)
            letter = DeadLetter(
                self.component,
                r.reason,
                f"wal@{format_lsn(r.lsn)}",
                r.raw,
                r.detail,
                (r.table or "unknown").encode(),
                extra,
            )
            key, value, headers = letter.envelope()
            futures.append(
                (r.reason, await self.producer.send(self.topic, value=value, key=key, headers=headers))
            )
        for reason, future in futures:
            await future
            DLQ_RECORDS.labels(component=self.component, reason=reason).inc()
        return len(futures)
