"""Initial snapshot: the catalog as it was at the slot's consistent point, then streaming from there.

1. ``CREATE_REPLICATION_SLOT … LOGICAL pgoutput (SNAPSHOT 'export')`` on the replication connection,
   which stays open (and idle) so the exported snapshot stays importable.
2. A normal connection imports it (``REPEATABLE READ`` + ``SET TRANSACTION SNAPSHOT``) and reads every
   catalog table, in foreign-key order, each ordered by dataset then id, as text (the same text output
   pgoutput sends, through the same converters, so snapshot rows and streamed rows are typed identically).
3. Rows become ``source=snapshot op=read`` records with ``commit_lsn = lsn = consistent point``, grouped
   per dataset as one transaction (``tx_size`` = that dataset's snapshot records), then
   ``Kind.SNAPSHOT_DONE`` goes to every partition; all acknowledged by Kafka.
4. Only then is the snapshot-done marker written: a row in ``<state_schema>.connector_state``
   (slot name + consistent point). The marker lives in PostgreSQL, next to the slot, because the
   decision it drives ("is this slot's snapshot complete?") is taken at start-up against the slot: a
   slot without a marker (crash mid-snapshot) is dropped and recreated, and the snapshot is redone.
   A Kafka-topic marker would need a consumer read-back on every start and could outlive the slot.
5. Streaming starts from the consistent point: changes committed after it are streamed, everything
   before it is in the snapshot: no gap, no overlap.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable

import psycopg
from psycopg import sql

from connectors import values
from connectors.protocol import ReplicationConnection, SlotInfo
from connectors.publisher import ChangePublisher
from walduck.catalog_tables import PUBLISHED_TABLES, dataset_of, routing_column
from walduck.lsn import format_lsn
from walduck.metrics import CONNECTOR_SNAPSHOT_ROWS
from walduck.records import GLOBAL_KEY, ChangeRecord, Kind, Op, Source
from walduck.timeutil import iso, utcnow

log = logging.getLogger(__name__)


def marker_exists(conn: psycopg.Connection, state_schema: str, slot: str) -> bool:
    query = sql.SQL("SELECT 1 FROM {}.connector_state WHERE slot_name = %s").format(
        sql.Identifier(state_schema)
    )
    return conn.execute(query, [slot]).fetchone() is not None


def clear_marker(conn: psycopg.Connection, state_schema: str, slot: str) -> None:
    query = sql.SQL("DELETE FROM {}.connector_state WHERE slot_name = %s").format(
        sql.Identifier(state_schema)
    )
    conn.execute(query, [slot])


def write_marker(conn: psycopg.Connection, state_schema: str, slot: str, lsn: str) -> None:
    query = sql.SQL(
        "INSERT INTO {}.connector_state (slot_name, snapshot_lsn) VALUES (%s, %s::pg_lsn)"
        " ON CONFLICT (slot_name) DO UPDATE SET snapshot_lsn = EXCLUDED.snapshot_lsn, snapshot_done_at = now()"
    ).format(sql.Identifier(state_schema))
    conn.execute(query, [slot, lsn])


async def _columns(conn: psycopg.AsyncConnection, schema: str, table: str) -> list[tuple[str, int]]:
    cur = await conn.execute(
        "SELECT a.attname, a.atttypid FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum",
        [schema, table],
    )
    return [(r[0], int(r[1])) for r in await cur.fetchall()]


async def snapshot(
    repl: ReplicationConnection,
    dsn: str,
    catalog_schema: str,
    slot: str,
    publisher: ChangePublisher,
    fetch_rows: int = 5_000,
) -> SlotInfo:
    """Create ``slot`` with an exported snapshot, publish the catalog, return the slot info.
    The caller writes the marker and starts streaming from ``info.consistent_point``."""
    info = await repl.create_slot(slot, export_snapshot=True)
    assert info.snapshot_name is not None
    cp = info.consistent_point
    started = iso(utcnow())
    schema = sql.Identifier(catalog_schema)
    acks: list[Awaitable[int]] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(info.snapshot_name)))
        await conn.execute("SET LOCAL DateStyle = ISO")
        await conn.execute("SET LOCAL extra_float_digits = 1")
        # per-dataset sizes first (same snapshot), so every record carries its tx_size
        sizes: Counter[str] = Counter()
        for table in PUBLISHED_TABLES:
            col = routing_column(table)
            if col is None:
                query = sql.SQL("SELECT NULL, count(*) FROM {}.{}").format(schema, sql.Identifier(table))
            else:
                query = sql.SQL("SELECT {c}, count(*) FROM {s}.{t} GROUP BY {c}").format(
                    c=sql.Identifier(col), s=schema, t=sql.Identifier(table)
                )
            for ds, n in await (await conn.execute(query)).fetchall():
                sizes[ds or GLOBAL_KEY] += n
        total = sum(sizes.values())
        seen: Counter[str] = Counter()
        for table in PUBLISHED_TABLES:
            cols = await _columns(conn, catalog_schema, table)
            # a dataset's rows together (issue 15): its transaction share in the compactor then completes as soon
            # as its last row is read, instead of every dataset's staying open (and buffered) until the end of
            # the table, as an id order interleaving all datasets did
            col = routing_column(table)
            order = [sql.Identifier(col)] if col not in (None, "id") else []
            select = sql.SQL("SELECT {} FROM {}.{} ORDER BY {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c, _ in cols),
                schema,
                sql.Identifier(table),
                sql.SQL(", ").join([*order, sql.Identifier("id")]),
            )
            async with conn.cursor(name=f"walduck_snapshot_{table}") as cur:
                cur.itersize = fetch_rows
                await cur.execute(select)
                batch: list[ChangeRecord] = []
                async for row in cur:
                    new = {
                        name: None if v is None else values.convert(oid, v.encode())
                        for (name, oid), v in zip(cols, row, strict=True)
                    }
                    ds = dataset_of(table, new)
                    key = ds or GLOBAL_KEY
                    batch.append(
                        ChangeRecord(
                            kind=Kind.CHANGE,
                            source=Source.SNAPSHOT,
                            lsn=cp,
                            commit_lsn=cp,
                            commit_ts=started,
                            table=table,
                            op=Op.READ,
                            key={"id": new.get("id")},
                            new=new,
                            dataset_id=ds,
                            tx_index=seen[key],
                            tx_size=sizes[key],
                            tx_total=total,
                        )
                    )
                    seen[key] += 1
                    if len(batch) >= fetch_rows:
                        acks.append(await publisher.publish(batch))
                        batch = []
                if batch:
                    acks.append(await publisher.publish(batch))
                CONNECTOR_SNAPSHOT_ROWS.labels(table=table).inc(cur.rownumber or 0)
        await conn.execute("COMMIT")
    done = ChangeRecord(
        kind=Kind.SNAPSHOT_DONE, source=Source.SNAPSHOT, lsn=cp, commit_lsn=cp, commit_ts=started
    )
    acks.append(await publisher.publish([done]))
    for ack in acks:
        await ack
    log.info("snapshot of %d rows at %s published", total, format_lsn(cp))
    return info
