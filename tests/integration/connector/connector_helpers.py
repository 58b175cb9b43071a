"""Helpers for the connector's integration tests: a migrated catalog, the connector in-process or as a
subprocess, reading the changes topic back, and PostgreSQL's own account of what was committed (a second,
``test_decoding`` slot peeked with ``pg_logical_slot_peek_changes``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from jsonschema import Draft202012Validator

from connectors.connector import Connector
from connectors.settings import ConnectorSettings
from walduck.catalog_tables import PUBLISHED_TABLES
from walduck.config import WalduckSettings
from walduck.contract import record_schema
from walduck.dlq import DeadLetter
from walduck.dlq import read as read_dead_letter
from walduck.jsonexact import loads_exact
from walduck.records import ChangeRecord, Kind, Op, Source


@contextlib.asynccontextmanager
async def running_connector(
    settings: WalduckSettings, csettings: ConnectorSettings | None = None
) -> AsyncIterator[Connector]:
    """The connector in this event loop; stopped (drained, flush confirmed) on exit."""
    connector = Connector(settings, csettings or ConnectorSettings(status_interval=0.2))
    task = asyncio.create_task(connector.run())
    try:
        yield connector
    finally:
        connector.stop()
        await asyncio.wait_for(task, 30)


def connector_env(settings: WalduckSettings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "WALDUCK_PG_DSN": settings.pg_dsn,
            "WALDUCK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "WALDUCK_CHANGES_TOPIC": settings.changes_topic,
            "WALDUCK_DLQ_TOPIC": settings.dlq_topic,
            "WALDUCK_SLOT_NAME": settings.slot_name,
            "WALDUCK_PUBLICATION_NAME": settings.publication_name,
            "WALDUCK_CATALOG_SCHEMA": settings.catalog_schema,
            "WALDUCK_STATUS_INTERVAL": "0.2",
            **extra,
        }
    )
    return env


def start_subprocess(settings: WalduckSettings, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """``python -m connectors run`` as its own process (for kill -9)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "connectors", "run", "--log-level", "WARNING"],
            env=connector_env(settings, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[3],
        )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def slot_state(dsn: str, slot: str) -> tuple[int | None, int]:
    """(confirmed_flush_lsn, pg_current_wal_lsn) as integers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s),"
            " pg_current_wal_lsn() - '0/0'::pg_lsn",
            [slot],
        ).fetchone()
    assert row is not None
    return (None if row[0] is None else int(row[0])), int(row[1])


async def wait_confirmed(dsn: str, slot: str, target: int, wait_s: float = 60.0) -> int:
    """Until the slot's confirmed_flush_lsn reaches ``target``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        confirmed, _ = slot_state(dsn, slot)
        if confirmed is not None and confirmed >= target:
            return confirmed
        if loop.time() > deadline:
            raise AssertionError(f"confirmed_flush_lsn {confirmed} did not reach {target} in {wait_s}s")
        await asyncio.sleep(0.2)


async def wait_slot(dsn: str, slot: str, wait_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while slot_state(dsn, slot)[0] is None:
        if loop.time() > deadline:
            raise AssertionError(f"slot {slot} was not created in {wait_s}s")
        await asyncio.sleep(0.2)


def current_lsn(dsn: str) -> int:
    return slot_state(dsn, "")[1]


async def read_dead_letters(bootstrap: str, topic: str, idle_ms: int = 1500) -> list[DeadLetter]:
    """Every record of the DLQ topic, read back through the envelope (``walduck.dlq``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[DeadLetter] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=50_000)
            for msgs in batch.values():
                out += [read_dead_letter(m.value, m.headers, m.key) for m in msgs]
        return out
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, idle_ms: int = 1500) -> dict[int, list[tuple[bytes, bytes]]]:
    """Every (key, value) of every partition, in offset order, up to the end offsets as of now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        assert parts, f"topic {topic} has no partitions"
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: dict[int, list[tuple[bytes, bytes]]] = {tp.partition: [] for tp in parts}
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=50_000)
            for tp, msgs in batch.items():
                out[tp.partition].extend((m.key or b"", m.value or b"") for m in msgs)
        return out
    finally:
        await consumer.stop()


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return sorted(await producer.partitions_for(topic))
    finally:
        await producer.stop()


async def read_changes(bootstrap: str, topic: str) -> dict[int, list[ChangeRecord]]:
    """Every change record of the topic, each checked against the published contract (walduck/schemas/)
    before it is decoded: whatever the real connector writes in these tests validates."""
    raw = await read_topic(bootstrap, topic)
    contract = Draft202012Validator(record_schema("change-record"))
    for p, msgs in raw.items():
        for offset, (_, value) in enumerate(msgs):
            errors = [e.message for e in contract.iter_errors(loads_exact(value))]
            assert errors == [], f"{topic}/{p}@{offset} breaks the change-record contract: {errors}"
    return {p: [ChangeRecord.from_bytes(v) for _, v in msgs] for p, msgs in raw.items()}


# --- PostgreSQL's own account: test_decoding ---------------------------------------------------------------
_CHANGE = re.compile(
    r"^table (?P<schema>[^.]+)\.(?P<table>\S+): (?P<op>INSERT|UPDATE|DELETE|TRUNCATE):(?P<rest>.*)$"
)
_ID = re.compile(r"(?:^| )id\[text\]:'((?:[^']|'')*)'")
_DATASET = re.compile(r"(?:^| )dataset_id\[text\]:'((?:[^']|'')*)'")


@dataclass(frozen=True, slots=True)
class TruthChange:
    xid: int
    table: str
    op: str
    id: str | None
    dataset_id: str | None


def create_truth_slot(dsn: str, slot: str) -> int:
    """A ``test_decoding`` slot; returns its consistent point."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT lsn - '0/0'::pg_lsn FROM pg_create_logical_replication_slot(%s, 'test_decoding')", [slot]
        ).fetchone()
    assert row is not None
    return int(row[0])


def truth_changes(dsn: str, slot: str, schema: str = "timestore") -> list[TruthChange]:
    """Every committed change of the five catalog tables since the slot was created, in commit order."""
    tables = {
        "storage_targets",
        "datasets",
        "dataset_schema_versions",
        "dataset_manifests",
        "dataset_partitions",
    }
    out: list[TruthChange] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT xid::text::bigint, data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", [slot]
        ).fetchall()
    for xid, data in rows:
        m = _CHANGE.match(data)
        if m is None or m["schema"] != schema or m["table"] not in tables:
            continue
        rest = m["rest"]
        ident = _ID.search(rest)
        ds = _DATASET.search(rest)
        table = m["table"]
        dataset = (ident[1] if ident else None) if table == "datasets" else (ds[1] if ds else None)
        out.append(TruthChange(int(xid), table, m["op"].lower(), ident[1] if ident else None, dataset))
    return out


async def wait_snapshot_done(
    dsn: str, slot: str, state_schema: str = "walduck", wait_s: float = 60.0
) -> None:
    """Until the connector recorded its snapshot-done marker for ``slot``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        with psycopg.connect(dsn, autocommit=True) as conn:
            ok = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [f"{state_schema}.connector_state"]
            ).fetchone()
            if ok and ok[0]:
                row = conn.execute(
                    f'SELECT 1 FROM "{state_schema}".connector_state WHERE slot_name = %s', [slot]
                ).fetchone()
                if row is not None:
                    return
        if loop.time() > deadline:
            raise AssertionError(f"snapshot of slot {slot} not done in {wait_s}s")
        await asyncio.sleep(0.2)


def record_identity(r: ChangeRecord) -> tuple[object, ...]:
    return (r.commit_lsn, r.lsn, r.tx_index, r.dataset_id, r.table, str(r.op), (r.key or {}).get("id"))


CATALOG_TABLES = PUBLISHED_TABLES


def catalog_rows(dsn: str, schema: str = "timestore") -> dict[str, dict[str, dict[str, object]]]:
    """Every row of the five catalog tables, typed like the connector types them (text -> converters)."""
    from connectors.values import convert

    def typed(oid: int, text: str) -> object:
        value = convert(oid, text.encode())
        # JSON columns are PostgreSQL's text (orjson.Fragment): read as the compactor reads a record
        return loads_exact(orjson.dumps(value)) if isinstance(value, orjson.Fragment) else value

    out: dict[str, dict[str, dict[str, object]]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET DateStyle = ISO")
        for table in CATALOG_TABLES:
            cols = conn.execute(
                "SELECT a.attname, a.atttypid::int FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
                " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                [schema, table],
            ).fetchall()
            select = ", ".join(f'"{name}"::text' for name, _ in cols)
            rows = conn.execute(f'SELECT {select} FROM "{schema}"."{table}"').fetchall()
            out[table] = {
                row[0]: {
                    n: None if v is None else typed(oid, v) for (n, oid), v in zip(cols, row, strict=True)
                }
                for row in rows
            }
    return out


def fold(
    by_partition: dict[int, list[ChangeRecord]], snapshot_lsn: int | None = None
) -> dict[str, dict[str, dict]]:
    """Apply snapshot reads then stream changes, partition by partition in offset order (global rows from
    partition 0 only). Raises AssertionError on an overlap (read/insert of a present row) or a gap
    (update/delete of an absent row). With ``snapshot_lsn``, snapshot records of other snapshots are ignored."""
    state: dict[str, dict[str, dict]] = {t: {} for t in CATALOG_TABLES}
    for partition in sorted(by_partition):
        for r in by_partition[partition]:
            if r.kind is not Kind.CHANGE or (r.dataset_id is None and partition != min(by_partition)):
                continue
            if r.source is Source.SNAPSHOT and snapshot_lsn is not None and r.commit_lsn != snapshot_lsn:
                continue
            assert r.table is not None
            rows = state[r.table]
            rid = (r.key or {}).get("id")
            if r.op in (Op.READ, Op.INSERT):
                assert rid not in rows, f"overlap: {r.op} of present {r.table} {rid} at {r.commit_lsn}"
                rows[rid] = r.new
            elif r.op is Op.UPDATE:
                assert rid in rows, f"gap: update of absent {r.table} {rid} at {r.commit_lsn}"
                rows[rid] = r.new
            elif r.op is Op.DELETE:
                assert rid in rows, f"gap: delete of absent {r.table} {rid} at {r.commit_lsn}"
                del rows[rid]
            elif r.op is Op.TRUNCATE:
                rows.clear()
    return state


def assert_same_catalog(got: dict[str, dict[str, dict]], want: dict[str, dict[str, dict]]) -> None:
    """Equality with a short explanation (pytest's diff of two 100k-row dicts takes minutes)."""
    problems = []
    for table in CATALOG_TABLES:
        g, w = got.get(table, {}), want.get(table, {})
        missing = sorted(set(w) - set(g))
        extra = sorted(set(g) - set(w))
        differ = sorted(k for k in set(g) & set(w) if g[k] != w[k])
        if missing or extra or differ:
            sample = differ[:1]
            detail = {
                k: {c: (g[k].get(c), w[k].get(c)) for c in w[k] if g[k].get(c) != w[k].get(c)} for k in sample
            }
            problems.append(
                f"{table}: {len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, "
                f"{len(differ)} differ {detail}"
            )
    assert not problems, "\n".join(problems)
