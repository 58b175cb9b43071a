"""The session's PostgreSQL and Kafka (from tests/conftest.py) are what the pipeline needs."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn

from stack.services.topics import ensure_topics, topic_partitions

pytestmark = pytest.mark.integration


def _show(dsn: str, name: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def test_postgres_is_set_up_for_logical_decoding(pg_dsn: str) -> None:
    assert _show(pg_dsn, "wal_level") == "logical"
    assert int(_show(pg_dsn, "max_replication_slots")) >= 20
    assert int(_show(pg_dsn, "max_wal_senders")) >= 20
    # a commit the connector decodes must be durable: synchronous_commit stays on
    assert _show(pg_dsn, "synchronous_commit") == "on"


def test_pg_dsn_is_superuser_on_db_postgres(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT current_database(), current_setting('is_superuser')").fetchone()
    assert row == ("postgres", "on")


def test_pgoutput_slot_can_be_created_in_a_fresh_db(fresh_db, pg_dsn: str) -> None:
    dsn = fresh_db()
    slot = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        dbname = conn.execute("SELECT current_database()").fetchone()
    assert dbname is not None and dbname[0] != "postgres"
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT database FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    assert row == (dbname[0],)


def test_fresh_db_databases_are_distinct(fresh_db) -> None:
    a, b = fresh_db(), fresh_db()
    assert a != b
    with psycopg.connect(a, autocommit=True) as conn:
        conn.execute("CREATE TABLE only_in_a (x int)")
    with psycopg.connect(b) as conn:
        row = conn.execute("SELECT to_regclass('only_in_a')").fetchone()
    assert row == (None,)


async def test_message_round_trip_through_kafka(kafka_bootstrap: str, fresh_topics) -> None:
    settings = await fresh_topics(partitions=2)
    payload = uuid.uuid4().bytes
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(settings.changes_topic, payload, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        settings.changes_topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"g-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (msg.value, msg.key, msg.partition, msg.offset) == (payload, b"k", meta.partition, meta.offset)


async def test_broker_speaks_kafka_4_protocol(kafka_bootstrap: str) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)
    conn = await create_conn(host, int(port))
    try:
        versions = conn._versions  # api_key -> (min, max) from the ApiVersions handshake
    finally:
        conn.close()
    # KIP-896 (Kafka 4.0) removed Fetch v0-v3 and ListOffsets v0, which a 3.x broker still advertises
    # (Produce v0-v2 stay advertised for old librdkafka clients, so they prove nothing)
    assert versions[1][0] >= 4, versions[1]
    assert versions[2][0] >= 1, versions[2]


async def test_ensure_topics_partitions_retention_and_idempotence(kafka_bootstrap: str, fresh_topics) -> None:
    settings = await fresh_topics(partitions=3)
    names = [settings.changes_topic, settings.deltas_topic, settings.dlq_topic]
    assert await topic_partitions(settings, names) == dict.fromkeys(names, 3)
    assert await ensure_topics(kafka_bootstrap, settings) == []  # already there: nothing created
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {"retention.ms": None}) for name in names]
        )
    finally:
        await admin.close()
    retention = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}.get("retention.ms")
        for response in responses
        for resource in response.resources
    }
    assert retention[settings.changes_topic] == str(settings.changes_retention_ms) != "-1"
    assert retention[settings.deltas_topic] == str(settings.deltas_retention_ms) != "-1"
    assert retention[settings.dlq_topic] != "-1"


async def test_fresh_topics_are_unique_and_carry_services(fresh_topics, pg_dsn: str, fresh_db) -> None:
    other_dsn = fresh_db()
    a = await fresh_topics()
    b = await fresh_topics(partitions=1, pg_dsn=other_dsn)
    assert a.changes_topic != b.changes_topic and a.slot_name != b.slot_name
    assert a.pg_dsn == pg_dsn and b.pg_dsn == other_dsn
    assert a.topic_partitions == 4 and b.topic_partitions == 1
    assert a.kafka_bootstrap == b.kafka_bootstrap != ""
