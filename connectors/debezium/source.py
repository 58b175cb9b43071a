"""The Debezium source's Kafka loop (layer 3 of :mod:`connectors.debezium`): Debezium's topics in, walduck's
changes topic out. Used by ``walduck connector run`` when ``WALDUCK_CONNECTOR_SOURCE=debezium``.

1. Refuse what cannot be exact: ``<prefix>.transaction`` missing or with more than one partition (END events
   must be in commit order); the per-table topics are assigned as they appear (a table Debezium has not seen a
   change of has no topic yet).
2. Every partition of every input topic is assigned to this one consumer (``group_id`` only stores offsets:
   one Debezium source per Debezium connector, like walduck's own connector per slot) and resumed from the
   group's committed offsets (earliest when there are none).
3. Each record goes through :mod:`~connectors.debezium.events` (refused ones to the DLQ with their reason,
   metric ``walduck_dlq_records_total{component="debezium",reason}``) into the
   :class:`~connectors.debezium.assembler.Assembler`.
4. Whole transactions, in commit order, are published with the connector's own
   :class:`~connectors.publisher.ChangePublisher` (same keys, partitions and size policy); a transaction of
   heartbeat-table rows only is a heartbeat to every partition.
5. Once Kafka acknowledged what was published, the assembler's committable offsets are committed: a crash
   re-reads at most the unacknowledged transactions, re-published with their commit LSN (dropped downstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from connectors.debezium.assembler import Assembled, Assembler
from connectors.debezium.errors import DebeziumError, UnusableEvent
from connectors.debezium.events import SNAPSHOT_LAST, parse_event, parse_transaction, table_of
from connectors.publisher import ChangePublisher, make_producer
from connectors.settings import ConnectorSettings
from walduck.catalog_tables import PUBLISHED_TABLES
from walduck.config import WalduckSettings
from walduck.dlq import DeadLetter
from walduck.jsonexact import loads_exact
from walduck.kafka_security import client_kwargs, start_client
from walduck.metrics import CONNECTOR_RECORDS, CONNECTOR_TRANSACTIONS, DLQ_RECORDS
from walduck.records import ChangeRecord, Kind, Source
from walduck.timeutil import iso, utcnow

log = logging.getLogger(__name__)
COMPONENT = "debezium"
# commit metadata on the input offsets once Debezium's snapshot was read whole (a restart does not wait again)
SNAPSHOT_DONE_MARK = "walduck:snapshot-done"


class DebeziumSource:
    def __init__(self, settings: WalduckSettings, knobs: ConnectorSettings) -> None:
        if not knobs.debezium_topic_prefix:
            raise DebeziumError(
                "WALDUCK_CONNECTOR_SOURCE=debezium needs WALDUCK_CONNECTOR_DEBEZIUM_TOPIC_PREFIX (Debezium's topic.prefix)"
            )
        self.settings = settings
        self.knobs = knobs
        self.prefix = knobs.debezium_topic_prefix
        self.schema = settings.catalog_schema
        self.tx_topic = f"{self.prefix}.transaction"
        self.heartbeat_topic = f"{self.prefix}.{self.schema}.{knobs.debezium_heartbeat_table}"
        self.table_topics = [f"{self.prefix}.{self.schema}.{t}" for t in PUBLISHED_TABLES]
        self.group = knobs.debezium_group or f"walduck-debezium-{self.prefix}"
        self.assembler = Assembler(snapshot_done=knobs.debezium_snapshot_mode == "no_data")
        self._snapshot_ends: dict[TopicPartition, int] | None = None
        self._stop = asyncio.Event()
        self.published_transactions = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_kwargs(self.settings),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.settings.max_message_bytes,
        )
        producer = make_producer(self.settings, client_id="walduck-debezium")
        await start_client(consumer, self.settings)
        await start_client(producer, self.settings)
        publisher = ChangePublisher(producer, self.settings.changes_topic, self.settings.max_message_bytes)
        try:
            await self._loop(consumer, publisher, producer)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> set[TopicPartition]:
        """Step 1-2: the transaction topic (exactly one partition) and every table topic that exists."""
        # the whole cluster's metadata: the client itself only tracks the topics it already reads
        cluster = await consumer._client.fetch_all_metadata()
        tx_parts = cluster.partitions_for_topic(self.tx_topic)
        if tx_parts is not None and len(tx_parts) != 1:
            raise DebeziumError(
                f"{self.tx_topic} has {len(tx_parts)} partitions; it must have 1 (its END events must stay in "
                "commit order): create it with one partition before Debezium starts"
            )
        wanted = set()
        for topic in [self.tx_topic, self.heartbeat_topic, *self.table_topics]:
            for p in cluster.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, p))
        if wanted != assigned:
            log.info(
                "Debezium source: reading %d partitions of %s",
                len(wanted),
                ", ".join(sorted({tp.topic for tp in wanted})),
            )
            kept = {tp: await consumer.position(tp) for tp in assigned}
            consumer.assign(sorted(wanted))
            for tp, position in kept.items():  # assign() forgets the positions of what it already read
                consumer.seek(tp, position)
            for tp in wanted - assigned:
                committed = await consumer.committed(tp)
                if tp.topic == self.tx_topic and committed is not None:
                    meta = await consumer._coordinator.fetch_committed_offsets([tp])
                    if meta.get(tp) is not None and meta[tp].metadata == SNAPSHOT_DONE_MARK:
                        self.assembler.snapshot_done = True  # a previous run saw the whole snapshot
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
        return wanted

    async def _loop(self, consumer: AIOKafkaConsumer, publisher: ChangePublisher, producer) -> None:
        assigned: set[TopicPartition] = set()
        last_assign = 0.0
        last_heartbeat = time.monotonic()
        inflight: list[tuple[asyncio.Future[int] | object, dict]] = []
        while not self._stop.is_set():
            if time.monotonic() - last_assign > 5.0 or not assigned:
                assigned = await self._assign(consumer, assigned)
                last_assign = time.monotonic()
                if self.tx_topic not in {tp.topic for tp in assigned}:
                    log.warning(
                        "waiting for %s (Debezium with provide.transaction.metadata=true)", self.tx_topic
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), 2.0)
                    continue
            batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, msgs in batches.items():
                for msg in msgs:
                    await self._take(tp, msg, producer)
            await self._check_snapshot(consumer, assigned)
            done = self.assembler.ready()
            if done:
                ack = await publisher.publish([r for a in done for r in self._records(a)])
                inflight.append((asyncio.ensure_future(ack), self.assembler.committable()))
                self.published_transactions += len(done)
                last_heartbeat = time.monotonic()
            elif (
                self.knobs.heartbeat_interval > 0
                and time.monotonic() - last_heartbeat >= self.knobs.heartbeat_interval
                and self.assembler.last_commit_lsn >= 0
            ):
                ack = await publisher.publish([self._heartbeat(self.assembler.last_commit_lsn)])
                inflight.append((asyncio.ensure_future(ack), self.assembler.committable()))
                last_heartbeat = time.monotonic()
            elif not inflight and batches:
                inflight.append((None, self.assembler.committable()))  # only skipped records: commit them
            inflight = await self._commit_acked(consumer, inflight)
        for fut, _ in inflight:
            if isinstance(fut, asyncio.Future):
                with contextlib.suppress(Exception):
                    await fut
        await self._commit_acked(consumer, inflight)

    async def _check_snapshot(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Debezium's last snapshot record was read: the snapshot is complete once every table partition was
        read up to its end offset taken after that record (earlier records of other partitions are there)."""
        a = self.assembler
        if a.snapshot_done or not a.snapshot_last_seen:
            return
        tables = [tp for tp in assigned if tp.topic not in (self.tx_topic, self.heartbeat_topic)]
        if self._snapshot_ends is None:
            self._snapshot_ends = await consumer.end_offsets(tables)
        for tp, end in self._snapshot_ends.items():
            if await consumer.position(tp) < end:
                return
        a.finish_snapshot(iso(utcnow()))
        log.info("Debezium snapshot complete: streamed transactions flow")

    async def _commit_acked(self, consumer: AIOKafkaConsumer, inflight: list) -> list:
        """Step 5: commit the offsets of the oldest publishes Kafka acknowledged (in order)."""
        offsets = None
        while inflight and (inflight[0][0] is None or inflight[0][0].done()):
            fut, committable = inflight.pop(0)
            if fut is not None:
                fut.result()  # a failed publish raises: nothing past it is committed; the supervisor restarts
            offsets = committable
        if offsets:
            mark = SNAPSHOT_DONE_MARK if self.assembler.snapshot_done else ""
            await consumer.commit(
                {TopicPartition(t, p): OffsetAndMetadata(o, mark) for (t, p), o in offsets.items()}
            )
        return inflight

    async def _take(self, tp: TopicPartition, msg, producer) -> None:
        key = (tp.topic, tp.partition)
        try:
            if tp.topic == self.tx_topic:
                end = parse_transaction(msg.value)
                if end is None:
                    self.assembler.skip(key, msg.offset)
                else:
                    self.assembler.end(key, msg.offset, end)
                return
            if tp.topic == self.heartbeat_topic:
                xid, order = _tx_position(msg.value)
                if (
                    _snapshot_marker(msg.value) == SNAPSHOT_LAST
                ):  # the heartbeat table may be snapshotted last
                    self.assembler.snapshot_last_seen = True
                if xid is None:
                    self.assembler.skip(key, msg.offset)
                else:
                    self.assembler.event(key, msg.offset, xid, order, None, heartbeat=True)
                return
            event = parse_event(table_of(tp.topic, self.prefix, self.schema), msg.value)
            if event is None:
                self.assembler.skip(key, msg.offset)
                return
            if event.snapshot is not None:
                if self.assembler.snapshot_done:
                    raise UnusableEvent(
                        "snapshot read after the snapshot was complete (WALDUCK_CONNECTOR_DEBEZIUM_SNAPSHOT_MODE=no_data, "
                        "or Debezium snapshotted again: start walduck from a fresh Debezium topic prefix)"
                    )
                self.assembler.snapshot_read(key, msg.offset, event)
                return
            assert event.xid is not None and event.total_order is not None
            self.assembler.event(key, msg.offset, event.xid, event.total_order, event)
        except UnusableEvent as exc:
            xid, order = _tx_position(msg.value)
            if xid is not None:
                self.assembler.event(key, msg.offset, xid, order, None)  # its slot still counts
            else:
                self.assembler.skip(key, msg.offset)
            await self._dead_letter(tp, msg, exc.reason, producer)

    async def _dead_letter(self, tp: TopicPartition, msg, reason: str, producer) -> None:
        DLQ_RECORDS.labels(COMPONENT, "unusable_event").inc()
        log.warning("Debezium event %s[%s]@%s -> DLQ: %s", tp.topic, tp.partition, msg.offset, reason)
        letter = DeadLetter(
            COMPONENT,
            "unusable_event",
            f"{tp.topic}/{tp.partition}@{msg.offset}",
            msg.value or b"",
            reason,
            msg.key,
        )
        key, value, headers = letter.envelope()
        await producer.send(self.settings.dlq_topic, value=value, key=key, headers=headers)

    def _records(self, done: Assembled) -> list[ChangeRecord]:
        if not done.records:
            return [self._heartbeat(done.commit_lsn)]
        for r in done.records:
            CONNECTOR_RECORDS.labels(r.table or "", r.op.value if r.op else "").inc()
        CONNECTOR_TRANSACTIONS.inc()
        return done.records

    @staticmethod
    def _heartbeat(lsn: int) -> ChangeRecord:
        return ChangeRecord(
            kind=Kind.HEARTBEAT, source=Source.STREAM, lsn=lsn, commit_lsn=lsn, commit_ts=iso(utcnow())
        )


def _tx_position(value: bytes | None) -> tuple[int | None, int]:
    """``(txId, total_order)`` of a raw Debezium event when its bytes still name them, else ``(None, 0)``."""
    if not value:
        return None, 0
    try:
        doc = loads_exact(value)
        if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
            doc = doc["payload"]
        xid = doc["source"]["txId"]
        order = doc["transaction"]["total_order"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return None, 0
    return (xid, order) if isinstance(xid, int) and isinstance(order, int) else (None, 0)


def _snapshot_marker(value: bytes | None) -> str | None:
    """Debezium's ``source.snapshot`` of a raw event (``None`` when absent or unreadable)."""
    if not value:
        return None
    try:
        doc = loads_exact(value)
        if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
            doc = doc["payload"]
        marker = doc["source"].get("snapshot")
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return None
    return marker if isinstance(marker, str) else None
