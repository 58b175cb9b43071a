"""The delivery loop: PostgreSQL logical decoding -> Kafka, at least once, LSN-ordered.

Over 500 lines: the numbered delivery steps, the FlushTracker they rely on and the slot loop read as one protocol.

Delivery steps (numbered where they happen below):

  (1) receive a whole transaction (Begin … Commit) from the slot;
  (2) publish its records (and its undecodable rows to the DLQ);
  (3) await Kafka's acknowledgement of all of them (the acker task, in commit order);
  (4) only then advance the confirmable flush LSN to the commit's end LSN;
  (5) send standby status updates with that flush LSN, periodically and at once on every keepalive
      that requests a reply; with nothing in flight the flush LSN advances to the keepalive's WAL end.

A restart continues from the slot's ``confirmed_flush_lsn`` (``START_REPLICATION … LOGICAL 0/0``), so
records produced but not confirmed are produced again with the same ``lsn``/``commit_lsn``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any

import psycopg
from aiokafka.errors import KafkaError
from psycopg import sql

from connectors import rowjson
from connectors.errors import PermanentError, permanent_reason
from connectors.protocol import Keepalive, ProtocolError, ReplicationConnection, ReplicationEnded, XLogData
from connectors.publisher import ChangePublisher, DeadLetterPublisher, make_producer
from connectors.settings import ConnectorSettings, SnapshotMode
from connectors.setup import ensure_publication, ensure_state_table, slot_exists
from connectors.snapshot import clear_marker, marker_exists, snapshot, write_marker
from connectors.transactions import Heartbeat, Transaction, TransactionAssembler
from walduck import metrics as m
from walduck.config import WalduckSettings
from walduck.errors import InvariantBroken
from walduck.kafka_security import start_client
from walduck.lsn import format_lsn
from walduck.records import ChangeRecord, Kind, Source
from walduck.timeutil import parse_iso, utcnow

log = logging.getLogger(__name__)


class LSNRegression(InvariantBroken, RuntimeError):
    """A transaction (or heartbeat) ends at or before a position already handed to Kafka/confirmed."""


class UnackedConfirmation(InvariantBroken, RuntimeError):
    """Confirming an LSN while an earlier transaction is still unacknowledged by Kafka."""


class FlushTracker:
    """The confirmable flush LSN: advances only over transactions Kafka acknowledged, in order."""

    def __init__(self, confirmed: int = 0) -> None:
        self.confirmed = confirmed
        self.last_enqueued = confirmed
        self.received = confirmed
        self._inflight: deque[int] = deque()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def enqueue(self, end_lsn: int) -> None:
        if end_lsn < self.last_enqueued:
            raise LSNRegression(
                f"transaction ending at {format_lsn(end_lsn)} after one ending at {format_lsn(self.last_enqueued)}"
            )
        self._inflight.append(end_lsn)
        self.last_enqueued = end_lsn

    def acked(self, end_lsn: int) -> None:
        if not self._inflight or self._inflight[0] != end_lsn:
            head = format_lsn(self._inflight[0]) if self._inflight else "nothing"
            raise UnackedConfirmation(f"ack for {format_lsn(end_lsn)} while {head} is the oldest in flight")
        self._inflight.popleft()
        self.confirmed = max(self.confirmed, end_lsn)

    def advance_idle(self, wal_end: int, in_transaction: bool) -> bool:
        """Nothing in flight and no transaction half received: the server's WAL end is safe to confirm."""
        if self._inflight or in_transaction or wal_end <= self.confirmed:
            return False
        self.confirmed = wal_end
        self.last_enqueued = max(self.last_enqueued, wal_end)
        return True


@dataclass(slots=True)
class _InFlight:
    end_lsn: int
    ack: Awaitable[int]
    records: int
    commit_ts: str | None
    started: float
    is_tx: bool


class Connector:
    def __init__(self, settings: WalduckSettings, csettings: ConnectorSettings | None = None) -> None:
        self.settings = settings
        self.csettings = csettings or ConnectorSettings()
        rowjson.active(
            self.csettings.row_encoder
        )  # WALDUCK_CONNECTOR_ROW_ENCODER=native without the build: fail now
        self.stop_event = asyncio.Event()
        self.tracker = FlushTracker()
        self.sessions = 0
        self._room = asyncio.Event()
        self._watermark_due: tuple[int, str] | None = None
        # highest LSN of any heartbeat or watermark published (they must not go backwards on a partition)
        self._last_progress = 0
        # what the connector's /ready reads (walduck/health.py): the session's producer, and whether the slot
        # streams now (False while connecting, snapshotting, waiting for the slot, backing off after an error)
        self.producer: Any = None
        self.streaming = False

    # --- outer loop: reconnect with exponential backoff ------------------------------------
    async def run(self) -> None:
        backoff = self.csettings.backoff_initial
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                finished = await self._session()
                if finished:
                    return
            except (psycopg.OperationalError, ReplicationEnded, OSError, ProtocolError) as exc:
                m.CONNECTOR_ERRORS.labels(kind="postgres").inc()
                reason = permanent_reason(exc)
                if reason is not None:  # retrying cannot fix it: one clear line, exit 2 (connectors/cli.py)
                    raise PermanentError(f"PostgreSQL refuses the connector: {reason}") from exc
                log.warning("PostgreSQL connection lost: %s", exc)
            except psycopg.Error as exc:  # e.g. the setup queries' privileges: permanent, or a bug (raised)
                reason = permanent_reason(exc)
                if reason is None:
                    raise
                raise PermanentError(f"PostgreSQL refuses the connector: {reason}") from exc
            except KafkaError as exc:
                m.CONNECTOR_ERRORS.labels(kind="kafka").inc()
                log.warning("Kafka error: %s", exc)
            if time.monotonic() - started > 30:
                backoff = self.csettings.backoff_initial
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), backoff)
            backoff = min(backoff * 2, self.csettings.backoff_max)

    def stop(self) -> None:
        self.stop_event.set()

    # --- one session: connect, (snapshot), stream until an error or stop -------------------
    async def _session(self) -> bool:
        """Returns True when the connector is done (stop requested or initial_only finished)."""
        self.sessions += 1
        s = self.settings
        producer = self.producer = make_producer(
            s
        )  # max_request_size: the one size limit (walduck/sizepolicy.py)
        await start_client(producer, s)
        repl: ReplicationConnection | None = None
        try:
            publisher = ChangePublisher(producer, s.changes_topic, s.max_message_bytes)
            dlq = DeadLetterPublisher(producer, s.dlq_topic)
            await publisher.partitions()
            repl = await ReplicationConnection.open(s.pg_dsn)
            start_lsn = await self._prepare_slot(repl, publisher)
            if start_lsn is None:
                return True
            self.tracker = FlushTracker(await self._confirmed_flush_lsn())
            if not await self._start_replication(
                repl,
                start_lsn,
                {
                    "proto_version": "1",
                    "publication_names": s.publication_name,
                    "messages": "true",
                },
            ):
                return True
            encoder = rowjson.active(self.csettings.row_encoder)
            for name in ("native", "python"):
                m.CONNECTOR_ROW_ENCODER.labels(name).set(1 if name == encoder else 0)
            if encoder != "native":
                log.warning(
                    "row encoder: python (the compiled connectors._rowjson is %s)",
                    "not built" if rowjson.NativeRowEncoder is None else "switched off",
                )
            log.info(
                "streaming slot %s from %s (%s row encoder)", s.slot_name, format_lsn(start_lsn), encoder
            )
            self.streaming = True
            return await self._stream(repl, publisher, dlq)
        finally:
            self.streaming = False
            if repl is not None:
                with contextlib.suppress(Exception):
                    await repl.close()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _start_replication(
        self, repl: ReplicationConnection, start_lsn: int, options: dict[str, str]
    ) -> bool:
        """START_REPLICATION, retried every ``slot_retry_interval`` while another walsender holds the slot
        (optionally terminating the holder after ``slot_takeover_after``). False: stop requested meanwhile."""
        s, cs = self.settings, self.csettings
        began = time.monotonic()
        took_over = False
        last_log = 0.0
        try:
            while True:
                try:
                    await repl.start(s.slot_name, start_lsn, options)
                    break
                except psycopg.errors.ObjectInUse as exc:
                    m.CONNECTOR_SLOT_BUSY.inc()
                    waited = time.monotonic() - began
                    m.CONNECTOR_SLOT_WAITING.set(max(waited, 1e-3))
                    if time.monotonic() - last_log >= 5:
                        log.warning("waiting for slot %s (%.1f s): %s", s.slot_name, waited, exc)
                        last_log = time.monotonic()
                    if cs.slot_takeover_after > 0 and waited >= cs.slot_takeover_after and not took_over:
                        took_over = await self._terminate_slot_holder()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop_event.wait(), cs.slot_retry_interval)
                    if self.stop_event.is_set():
                        return False
        finally:
            m.CONNECTOR_SLOT_WAITING.set(0)
        acquired = time.monotonic() - began
        m.CONNECTOR_SLOT_ACQUIRE.observe(acquired)
        if acquired > cs.slot_retry_interval:
            log.info("slot %s acquired after %.2f s", s.slot_name, acquired)
        return True

    async def _terminate_slot_holder(self) -> bool:
        """pg_terminate_backend the walsender holding our slot (never our own backend)."""
        async with await psycopg.AsyncConnection.connect(self.settings.pg_dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT a.pid, pg_terminate_backend(a.pid) FROM pg_replication_slots r"
                " JOIN pg_stat_activity a ON a.pid = r.active_pid"
                " WHERE r.slot_name = %s AND a.backend_type = 'walsender' AND a.pid <> pg_backend_pid()",
                [self.settings.slot_name],
            )
            row = await cur.fetchone()
        if row is None:
            return False
        m.CONNECTOR_SLOT_TAKEOVERS.inc()
        log.warning(
            "terminated walsender %s holding slot %s for %.1f s (WALDUCK_CONNECTOR_SLOT_TAKEOVER_AFTER)",
            row[0],
            self.settings.slot_name,
            self.csettings.slot_takeover_after,
        )
        return True

    async def _confirmed_flush_lsn(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.settings.pg_dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                [self.settings.slot_name],
            )
            row = await cur.fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    async def _prepare_slot(self, repl: ReplicationConnection, publisher: ChangePublisher) -> int | None:
        """Publication, state table and slot per snapshot mode; returns the LSN to stream from
        (0 = the slot's confirmed position) or None when there is nothing to stream."""
        s, cs = self.settings, self.csettings
        mode = cs.snapshot_mode
        with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
            ensure_state_table(conn, cs.state_schema)
            ensure_publication(conn, s)
            exists = slot_exists(conn, s.slot_name)
            done = marker_exists(conn, cs.state_schema, s.slot_name)
            if mode in (SnapshotMode.NEVER, SnapshotMode.NO_DATA):
                if not exists:
                    info = await repl.create_slot(s.slot_name, export_snapshot=False)
                    return info.consistent_point
                return 0
            redo = mode is SnapshotMode.ALWAYS or not exists or not done
            if not redo:
                return None if mode is SnapshotMode.INITIAL_ONLY else 0
            if exists:
                log.warning(
                    "slot %s has no completed snapshot: dropping it and snapshotting again", s.slot_name
                )
                conn.execute("SELECT pg_drop_replication_slot(%s)", [s.slot_name])
            clear_marker(conn, cs.state_schema, s.slot_name)
        # (the replication connection stays open and idle while the snapshot is read)
        info = await snapshot(
            repl, s.pg_dsn, s.catalog_schema, s.slot_name, publisher, cs.snapshot_fetch_rows
        )
        with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
            write_marker(conn, cs.state_schema, s.slot_name, format_lsn(info.consistent_point))
        if mode is SnapshotMode.INITIAL_ONLY:
            return None
        return info.consistent_point

    # --- the stream ------------------------------------------------------------------------
    async def _stream(
        self, repl: ReplicationConnection, publisher: ChangePublisher, dlq: DeadLetterPublisher
    ) -> bool:
        cs = self.csettings
        assembler = TransactionAssembler(cs.heartbeat_prefix, cs.row_encoder)
        queue: asyncio.Queue[_InFlight] = asyncio.Queue(maxsize=10_000)
        inflight_records = [0]
        acker = asyncio.create_task(self._acker(queue, inflight_records, repl), name="walduck-acker")
        heart = asyncio.create_task(self._heartbeats(), name="walduck-heartbeat")
        last_status = 0.0
        try:
            while True:
                for task in (acker, heart):
                    if task.done():
                        task.result()  # re-raise its error (Kafka, PostgreSQL)
                if self.stop_event.is_set():
                    await publisher.flush()
                    await self._drain(queue, acker)
                    await repl.send_status(
                        self.tracker.received, self.tracker.confirmed, self.tracker.confirmed
                    )
                    return True
                msg = repl.read_buffered()
                if msg is None:
                    # (2) nothing more buffered: a watermark behind what was published, then hand the open
                    # record batches to Kafka before waiting
                    await self._publish_watermark(publisher)
                    await publisher.flush()
                    wait = max(0.0, cs.status_interval - (time.monotonic() - last_status))
                    msg = await repl.read_message(min(wait, 0.5))
                reply_now = False
                handled = 0
                # everything libpq holds, without the per-message checks above (the hot loop)
                while msg is not None:
                    if type(msg) is XLogData:
                        if msg.wal_end > self.tracker.received:
                            self.tracker.received = msg.wal_end
                        # (1) receive a whole transaction: the assembler returns it at its Commit
                        item = assembler.feed(msg.start_lsn, msg.payload)
                        if item is not None:
                            if type(item) is Transaction:
                                await self._backpressure(inflight_records, acker, publisher)
                                await self._publish_tx(item, publisher, dlq, queue, inflight_records)
                            elif type(item) is Heartbeat:
                                await self._publish_heartbeat(item, publisher, queue, inflight_records)
                    elif type(msg) is Keepalive:
                        self.tracker.received = max(self.tracker.received, msg.wal_end)
                        # (5) nothing in flight: the keepalive's WAL end is confirmable
                        self.tracker.advance_idle(msg.wal_end, assembler.in_transaction)
                        m.CONNECTOR_LAG_BYTES.set(max(0, msg.wal_end - self.tracker.confirmed))
                        if msg.reply_requested:
                            reply_now = True  # answered below, at once
                            break
                    handled += 1
                    if handled >= 2_000:
                        await asyncio.sleep(0)  # let the acker and aiokafka's sender run
                        break
                    msg = repl.read_buffered()
                if reply_now or time.monotonic() - last_status >= cs.status_interval:
                    # (5) standby status with the flush LSN Kafka has acknowledged
                    await repl.send_status(
                        self.tracker.received, self.tracker.confirmed, self.tracker.confirmed
                    )
                    m.CONNECTOR_CONFIRMED_LSN.set(self.tracker.confirmed)
                    if self.tracker.inflight == 0:
                        m.CONNECTOR_LAG_SECONDS.set(0)
                    last_status = time.monotonic()
        finally:
            publisher.abort(ReplicationEnded("session ended before the batch was sent"))
            for task in (acker, heart):
                task.cancel()
            for task in (acker, heart):
                with contextlib.suppress(BaseException):
                    await task

    async def _backpressure(
        self, inflight_records: list[int], acker: asyncio.Task[None], publisher: ChangePublisher
    ) -> None:
        """Wait while too many records are unacknowledged (re-raising the acker's error, if any)."""
        if inflight_records[0] > self.csettings.max_inflight_records:
            await publisher.flush()
        while inflight_records[0] > self.csettings.max_inflight_records:
            if acker.done():
                acker.result()
                raise RuntimeError("acker stopped")
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), 0.5)

    async def _publish_tx(
        self,
        tx: Transaction,
        publisher: ChangePublisher,
        dlq: DeadLetterPublisher,
        queue: asyncio.Queue[_InFlight],
        inflight_records: list[int],
    ) -> None:
        started = time.monotonic()
        self.tracker.enqueue(tx.end_lsn)
        if tx.records:
            self._watermark_due = (tx.end_lsn, tx.commit_ts)
        # (2) publish its records (in order; per-partition order is kept by the idempotent producer)
        ack = await publisher.publish(tx.records, flush=False)
        if tx.rejected:
            m.CONNECTOR_ERRORS.labels(kind="decode").inc(len(tx.rejected))
            dlq_ack = asyncio.ensure_future(dlq.publish(tx.rejected))
            ack = _both(ack, dlq_ack)
        for (table, op), n in Counter((r.table or "", r.op) for r in tx.records).items():
            m.CONNECTOR_RECORDS.labels(table=table, op=str(op)).inc(n)
        inflight_records[0] += len(tx.records)
        await queue.put(_InFlight(tx.end_lsn, ack, len(tx.records), tx.commit_ts, started, True))

    async def _publish_watermark(self, publisher: ChangePublisher) -> None:
        """A heartbeat record at the end LSN of the last transaction published, to every partition, when the
        connector has caught up with what the server sent. Each partition then knows that every transaction
        ending at or before it has been delivered, so every context shard (also those the transaction did not
        touch) can claim that LSN at once: read-your-writes (``min_lsn`` = the writer's commit end) need not
        wait for the next periodic heartbeat. Not an LSN to confirm: the transaction itself is tracked."""
        due = self._watermark_due
        if due is None or not self.csettings.watermarks:
            return
        self._watermark_due = None
        end_lsn, commit_ts = due
        if end_lsn <= self._last_progress:
            # a heartbeat message written just after the commit (its LSN above the commit's end) already
            # went out after the transaction: heartbeat LSNs stay monotone on every partition
            return
        self._last_progress = end_lsn
        record = ChangeRecord(
            kind=Kind.HEARTBEAT, source=Source.STREAM, lsn=end_lsn, commit_lsn=end_lsn, commit_ts=commit_ts
        )
        ack = await publisher.publish([record], flush=False)
        if isinstance(ack, Coroutine):
            ack.close()  # a watermark confirms nothing: its acknowledgement is not awaited

    async def _publish_heartbeat(
        self,
        hb: Heartbeat,
        publisher: ChangePublisher,
        queue: asyncio.Queue[_InFlight],
        inflight_records: list[int],
    ) -> None:
        if hb.lsn <= self.tracker.confirmed or hb.lsn <= self._last_progress:
            # already confirmed past it (re-sent after a restart), or a watermark at a higher LSN went out
            return
        self._last_progress = hb.lsn
        self.tracker.enqueue(hb.lsn)
        ack = await publisher.publish([hb.record], flush=False)
        await queue.put(_InFlight(hb.lsn, ack, 0, None, time.monotonic(), False))

    async def _acker(
        self, queue: asyncio.Queue[_InFlight], inflight_records: list[int], repl: ReplicationConnection
    ) -> None:
        while True:
            item = await queue.get()
            # (3) await Kafka's acknowledgement of all of the transaction's records
            await item.ack
            # (4) only then advance the confirmable flush LSN to the commit's end LSN
            self.tracker.acked(item.end_lsn)
            m.CONNECTOR_LAG_BYTES.set(max(0, self.tracker.received - self.tracker.confirmed))
            inflight_records[0] -= item.records
            self._room.set()
            if queue.empty():
                # (5) the last transaction in flight is acknowledged: confirm it now rather than at the
                # next status interval, so the slot releases WAL (and read-your-writes waits) sooner
                await repl.send_status(self.tracker.received, self.tracker.confirmed, self.tracker.confirmed)
                m.CONNECTOR_CONFIRMED_LSN.set(self.tracker.confirmed)
            if item.is_tx:
                m.CONNECTOR_TRANSACTIONS.inc()
                m.CONNECTOR_PRODUCE_LATENCY.observe(time.monotonic() - item.started)
                if item.commit_ts:
                    lag = (utcnow() - parse_iso(item.commit_ts)).total_seconds()
                    m.CONNECTOR_LAG_SECONDS.set(max(0.0, lag))
            queue.task_done()

    async def _drain(self, queue: asyncio.Queue[_InFlight], acker: asyncio.Task[None]) -> None:
        done = asyncio.ensure_future(queue.join())
        await asyncio.wait([done, acker], return_when=asyncio.FIRST_COMPLETED)
        if acker.done():
            done.cancel()
            acker.result()

    async def _heartbeats(self) -> None:
        interval = self.csettings.heartbeat_interval
        if interval <= 0:
            return
        query = sql.SQL("SELECT pg_logical_emit_message(false, {}, now()::text)").format(
            sql.Literal(self.csettings.heartbeat_prefix)
        )
        async with await psycopg.AsyncConnection.connect(self.settings.pg_dsn, autocommit=True) as conn:
            while True:
                await conn.execute(query)
                await asyncio.sleep(interval)


async def _both(first: Awaitable[int], second: Awaitable[int]) -> int:
    a = await first
    return a + await second
