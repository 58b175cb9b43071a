"""A real Debezium PostgreSQL connector (Kafka Connect standalone, ``stack/services/debezium.py``) on a test
stack's catalog, configured as docs/operations.md "Debezium as a source" asks: transaction metadata on, its
transaction topic created with one partition beforehand, a heartbeat table driven by
``heartbeat.action.query``, the stack's publication and a slot of its own."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import psycopg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stack.local import Stack
from stack.services.debezium import DebeziumSource, LocalDebezium
from walduck.catalog_tables import PUBLISHED_TABLES

HEARTBEAT_TABLE = "walduck_debezium_heartbeat"


def prepare_catalog(stack: Stack, slot: str) -> None:
    s = stack.settings
    with psycopg.connect(s.admin_dsn(), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s.catalog_schema}.{HEARTBEAT_TABLE}"
            " (id integer PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(f"INSERT INTO {s.catalog_schema}.{HEARTBEAT_TABLE} VALUES (1) ON CONFLICT DO NOTHING")
        conn.execute(f"ALTER TABLE {s.catalog_schema}.{HEARTBEAT_TABLE} REPLICA IDENTITY FULL")
        conn.execute(f"ALTER PUBLICATION {s.publication_name} ADD TABLE {s.catalog_schema}.{HEARTBEAT_TABLE}")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])


async def create_transaction_topic(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}.transaction", num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


def start_debezium(stack: Stack, work_dir: Path, snapshot_mode: str = "no_data") -> tuple[LocalDebezium, str]:
    """Debezium streaming the stack's catalog; returns it and its topic prefix (WALDUCK_CONNECTOR_DEBEZIUM_TOPIC_PREFIX)."""
    s = stack.settings
    prefix = f"dbz{uuid.uuid4().hex[:8]}"
    slot = f"{prefix}_slot"
    prepare_catalog(stack, slot)
    asyncio.run(create_transaction_topic(s.kafka_bootstrap, prefix))
    source = DebeziumSource.from_dsn(
        s.admin_dsn(),
        slot=slot,
        publication=s.publication_name,
        schema=s.catalog_schema,
        tables=[*PUBLISHED_TABLES, HEARTBEAT_TABLE],
    )
    dbz = LocalDebezium(
        work_dir,
        s.kafka_bootstrap,
        source,
        prefix,
        extra={
            "provide.transaction.metadata": "true",
            "snapshot.mode": snapshot_mode,
            "heartbeat.interval.ms": "500",
            "heartbeat.action.query": f"UPDATE {s.catalog_schema}.{HEARTBEAT_TABLE} SET at = now() WHERE id = 1",
        },
    )
    dbz.start()
    return dbz, prefix
