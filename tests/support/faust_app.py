"""EXPERIMENTAL faust-streaming implementation of the compactor, used only by the faust evaluation test.

It exists to show, against the real broker, which of the compactor's guarantees faust-streaming can keep
(``tests/integration/pipeline/test_faust_evaluation.py``, conclusion in ``docs/compactor.md``). The
production compactor is :mod:`pipeline.runner` (plain aiokafka).

Design (the faust idioms the issue asks for):

* one agent over the changes topic, ``processing_guarantee="at_least_once"`` (NOT ``exactly_once``),
  ``stream.noack()``: an event is acked by hand only after the deltas of the window holding it are
  acknowledged by Kafka, so faust's commit (highest contiguous acked offset) never passes an open window;
* the state is the pickled :class:`~pipeline.compaction.Compactor` of each changes partition in a faust
  ``Table`` (memory store, changelog topic co-partitioned with the changes topic), written after the
  window's deltas are acked and before its events are acked; faust restores it from the changelog on
  (re)assignment;
* windows are sealed at EVERY clean point (no time-based flush): the window boundaries are then a pure
  function of the input, so a window re-processed after a crash yields the same deltas with the same
  ``src_offset_from..to`` (at-least-once duplicates that :func:`support.reference_consumer.replay` drops).
  Records at or below the restored state's ``covered_to`` are acked and skipped (the table may be ahead
  of the committed offset: it is written before the commit).

Configuration from the environment: ``WALDUCK_KAFKA_BOOTSTRAP``, ``WALDUCK_CHANGES_TOPIC``,
``WALDUCK_DELTAS_TOPIC``, ``WALDUCK_TOPIC_PARTITIONS``, ``WALDUCK_FAUST_APP_ID`` (consumer group and
changelog prefix), ``WALDUCK_FAUST_DATADIR``. Run (tests/ on PYTHONPATH): ``python -m support.faust_app worker -l info``.
"""

from __future__ import annotations

import logging
import os
import pickle

import faust
from faust.types import EventT

from pipeline.compaction import Compactor, InvalidChange
from walduck.config import KafkaSecurityProtocol, WalduckSettings
from walduck.deltas import Delta
from walduck.kafka_security import SASL_PROTOCOLS, security_kwargs
from walduck.records import ChangeRecord, MalformedRecord

log = logging.getLogger("walduck.faust_compactor")
STATE_TABLE = "compactor-state"


def state_key(partition: int) -> bytes:
    return f"p{partition}".encode()


def process(compactor: Compactor, raw: bytes, offset: int) -> list[Delta]:
    """Feed one input record; return the deltas sealed at this point (the window is sealed whenever clean).

    Deterministic: the same records in the same order give the same deltas with the same offset ranges.
    Malformed/invalid records are accounted and dropped (the evaluation has no DLQ)."""
    try:
        record = ChangeRecord.from_bytes(raw)
    except MalformedRecord:
        compactor.skip(offset)
    else:
        try:
            compactor.feed(record, offset)
        except InvalidChange:
            pass
    compactor.drain_rejected()
    return compactor.flush() if compactor.clean else []


def faust_credentials(settings: WalduckSettings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """The ``WALDUCK_KAFKA_*`` security settings as faust ``broker_credentials`` (None for PLAINTEXT)."""
    if settings.kafka_security_protocol is KafkaSecurityProtocol.PLAINTEXT:
        return None
    kw = security_kwargs(settings)
    if settings.kafka_security_protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(
            username=kw["sasl_plain_username"],
            password=kw["sasl_plain_password"],
            ssl_context=kw.get("ssl_context"),
            mechanism=kw["sasl_mechanism"],
        )
    return faust.SSLCredentials(kw["ssl_context"])


def create_app() -> faust.App:
    settings = WalduckSettings()
    app_id = os.environ.get("WALDUCK_FAUST_APP_ID", "walduck-faust-compactor")
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=os.environ.get("WALDUCK_FAUST_DATADIR", "/tmp/walduck-faust"),
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=0.5,
        web_enabled=False,
        producer_acks=-1,
        # True (faust's default) makes a rebalance wait until every started event is acked, but events of
        # an open window are deliberately not acked: the member then cannot rejoin and is evicted after
        # the rebalance timeout. Without the wait, held events of a revoked partition are simply dropped
        # (the new owner re-processes them from the committed offset).
        stream_wait_empty=os.environ.get("WALDUCK_FAUST_STREAM_WAIT_EMPTY", "false") == "true",
        key_serializer="raw",
        value_serializer="raw",
    )
    changes = app.topic(
        settings.changes_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    deltas_topic = app.topic(
        settings.deltas_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    state = app.Table(
        STATE_TABLE,
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
    )

    @app.agent(changes)
    async def compact(stream: faust.StreamT) -> None:
        # per partition: (the table blob the compactor was loaded from / last wrote, compactor, held events)
        loaded: dict[int, tuple[bytes | None, Compactor, list[EventT]]] = {}
        async for event in stream.noack().events():
            msg = event.message
            p = msg.partition
            blob = state.get(state_key(p))
            entry = loaded.get(p)
            if entry is None or entry[0] is not blob:
                # first event of this partition, or the table was restored/reassigned underneath us
                compactor = pickle.loads(blob) if blob is not None else Compactor(p)
                entry = (blob, compactor, [])
                loaded[p] = entry
                log.info(
                    "faust-compactor: partition %s state loaded, covered_to=%s, first event offset %s",
                    p,
                    compactor.covered_to,
                    msg.offset,
                )
            _, compactor, held = entry
            if msg.offset <= compactor.covered_to:
                event.ack()  # already in the restored state (the table is written before the commit)
                continue
            if msg.offset <= compactor.last_offset:
                continue  # re-delivered while still held in the open window
            if msg.offset != compactor.last_offset + 1:
                # the changes topic is neither compacted nor transactional: its offsets are contiguous, so
                # this is an event faust did not deliver to the agent (it is not re-delivered either)
                log.error(
                    "faust-compactor: partition %s delivery gap: expected offset %s, got %s",
                    p,
                    compactor.last_offset + 1,
                    msg.offset,
                )
            held.append(event)
            out = process(compactor, msg.value, msg.offset)
            if not compactor.clean:
                continue
            futures = [
                await deltas_topic.send(key=d.kafka_key(), value=d.to_bytes(), partition=p) for d in out
            ]
            for fut in futures:
                await fut  # the delta is acknowledged by Kafka (acks=all)
            new_blob = pickle.dumps(compactor)
            state[state_key(p)] = new_blob
            loaded[p] = (new_blob, compactor, [])
            for held_event in held:
                held_event.ack()
            if out:
                log.info(
                    "faust-compactor: partition %s sealed %s..%s (%d deltas)",
                    p,
                    out[0].src_offset_from,
                    out[0].src_offset_to,
                    len(out),
                )

    return app


app = create_app() if os.environ.get("WALDUCK_CHANGES_TOPIC") else None

if __name__ == "__main__":
    if app is None:
        raise SystemExit("set WALDUCK_CHANGES_TOPIC and the other WALDUCK_* variables first")
    logging.basicConfig(level=logging.INFO)
    app.main()
