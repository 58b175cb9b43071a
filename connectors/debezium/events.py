"""One Debezium change event -> the fields of a walduck change record (layer 1 of :mod:`connectors.debezium`).

Input: the key and value of a record on a Debezium per-table topic ``<prefix>.<schema>.<table>`` as the JSON
converter writes it, with or without the schema envelope (``{"schema": …, "payload": …}``). The value holds
``before``, ``after``, ``source`` (``txId``, ``lsn``, ``ts_us``, ``snapshot``), ``op`` (``c``/``u``/``d``/``r``)
and, with ``provide.transaction.metadata=true``, ``transaction`` (``id``, ``total_order``).

Values become what walduck's own connector writes (``walduck/records.py``): ``jsonb`` columns (Debezium: a
string holding PostgreSQL's JSON text) are carried verbatim as JSON, so numbers stay exact; ``timestamptz``
(Debezium's ``ZonedTimestamp``, ``…Z``) becomes walduck's instant text (``+00:00``, fraction only when
non-zero, ``infinity`` kept); integers, text and text arrays are the same in both. Which column has which type
comes from :data:`walduck.catalog_tables.JSON_COLUMNS` / :data:`~walduck.catalog_tables.INSTANT_COLUMNS`
(Debezium's JSON without schemas does not say).

What this layer does not do: assemble transactions (``assembler``), read Kafka (``source``), or accept
Debezium settings walduck cannot be exact with — it refuses them per event with a named reason
(:class:`~connectors.debezium.errors.UnusableEvent`): no ``transaction`` block on a streamed event
(``provide.transaction.metadata`` is off), an unchanged-TOAST placeholder (``__debezium_unavailable_value``:
the table lacks ``REPLICA IDENTITY FULL``), a truncate, a table walduck does not publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from connectors.debezium.errors import UnusableEvent
from walduck.catalog_tables import INSTANT_COLUMNS, JSON_COLUMNS, PUBLISHED_TABLES, dataset_of
from walduck.jsonexact import loads_exact
from walduck.records import Op
from walduck.timeutil import InstantError, format_micros, instant_micros

UNAVAILABLE = "__debezium_unavailable_value"
_OPS = {"c": Op.INSERT, "u": Op.UPDATE, "d": Op.DELETE, "r": Op.READ}
SNAPSHOT_LAST = "last"


@dataclass(slots=True)
class DebeziumEvent:
    """A translated row event; ``xid``/``total_order`` None for snapshot reads (no transaction)."""

    table: str
    op: Op
    key: dict[str, Any]
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    dataset_id: str | None
    lsn: int
    commit_ts: str
    xid: int | None
    total_order: int | None
    snapshot: str | None  # Debezium's source.snapshot for snapshot reads ("true", "first", "last", …)


def table_of(topic: str, prefix: str, schema: str) -> str:
    """The catalog table of a Debezium topic name; refuses topics of other tables."""
    head = f"{prefix}.{schema}."
    table = topic[len(head) :] if topic.startswith(head) else ""
    if table not in PUBLISHED_TABLES:
        raise UnusableEvent(f"topic {topic!r} is not a published catalog table under {head}*")
    return table


def _payload(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UnusableEvent(f"not JSON: {exc}") from None
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        doc = doc["payload"]
    if not isinstance(doc, dict):
        raise UnusableEvent("not a JSON object")
    return doc


def _row(table: str, row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    if not isinstance(row, dict):
        raise UnusableEvent("before/after is not an object")
    out: dict[str, Any] = {}
    json_cols, instant_cols = JSON_COLUMNS[table], INSTANT_COLUMNS[table]
    for name, value in row.items():
        if value == UNAVAILABLE or (isinstance(value, str) and value.startswith(UNAVAILABLE)):
            raise UnusableEvent(
                f"{table}.{name} is Debezium's unavailable-value placeholder: set REPLICA IDENTITY FULL"
            )
        if value is None:
            out[name] = None
        elif name in json_cols:
            if not isinstance(value, str):
                raise UnusableEvent(f"{table}.{name} (jsonb) is not a JSON string")
            try:
                loads_exact(value.encode())
            except (ValueError, RecursionError):
                raise UnusableEvent(f"{table}.{name} is not valid JSON text") from None
            out[name] = orjson.Fragment(value.encode())
        elif name in instant_cols:
            out[name] = instant(value, f"{table}.{name}")
        else:
            out[name] = value
    return out


def instant(value: Any, what: str) -> str:
    """Debezium's ``ZonedTimestamp`` text -> walduck's instant text."""
    if not isinstance(value, str):
        raise UnusableEvent(f"{what} is not a ZonedTimestamp string (time.precision.mode changed?)")
    try:
        micros = instant_micros(value)
    except InstantError as exc:
        raise UnusableEvent(f"{what}: {exc}") from None
    return value if micros is None else format_micros(micros)


def parse_event(table: str, value: bytes | None) -> DebeziumEvent | None:
    """The event of one record on ``table``'s topic; ``None`` for a tombstone (``tombstones.on.delete``)."""
    if value is None:
        return None
    doc = _payload(value)
    source = doc.get("source")
    if not isinstance(source, dict):
        raise UnusableEvent("event without source block")
    op_code = doc.get("op")
    if op_code == "t":
        raise UnusableEvent("truncate events are not translated (the catalog never truncates its tables)")
    op = _OPS.get(op_code)  # type: ignore[arg-type]
    if op is None:
        raise UnusableEvent(f"unknown op {op_code!r}")
    lsn, ts_us = source.get("lsn"), source.get("ts_us")
    if not isinstance(lsn, int) or lsn < 0:
        raise UnusableEvent("source.lsn missing or not a non-negative integer")
    if not isinstance(ts_us, int):
        ts_ms = source.get("ts_ms")
        if not isinstance(ts_ms, int):
            raise UnusableEvent("source.ts_us/ts_ms missing")
        ts_us = ts_ms * 1000
    snapshot = source.get("snapshot")
    snap = snapshot if op is Op.READ and snapshot not in (None, "false", False) else None
    tx = doc.get("transaction")
    xid = total_order = None
    if snap is None:
        if not isinstance(tx, dict) or not isinstance(tx.get("total_order"), int):
            raise UnusableEvent(
                "streamed event without a transaction block: set provide.transaction.metadata=true"
            )
        xid, total_order = source.get("txId"), tx["total_order"]
        if not isinstance(xid, int):
            raise UnusableEvent("source.txId missing")
    new, old = _row(table, doc.get("after")), _row(table, doc.get("before"))
    row = new if new is not None else old
    if row is None or "id" not in row:
        raise UnusableEvent("event without a row holding id")
    if op in (Op.INSERT, Op.UPDATE, Op.READ) and new is None:
        raise UnusableEvent(f"{op} event without after")
    return DebeziumEvent(
        table=table,
        op=op,
        key={"id": row["id"]},
        new=new,
        old=old,
        dataset_id=dataset_of(table, row),
        lsn=lsn,
        commit_ts=format_micros(ts_us),
        xid=xid,
        total_order=total_order,
        snapshot=snap,
    )


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    """An END event of the transaction metadata topic: ``id`` is ``<txId>:<commit LSN>``."""

    xid: int
    commit_lsn: int
    event_count: int


def parse_transaction(value: bytes | None) -> TransactionEnd | None:
    """An END event; ``None`` for BEGIN (it carries nothing walduck needs) and tombstones."""
    if value is None:
        return None
    doc = _payload(value)
    status = doc.get("status")
    if status == "BEGIN":
        return None
    if status != "END":
        raise UnusableEvent(f"transaction event with status {status!r}")
    ident, count = doc.get("id"), doc.get("event_count")
    try:
        xid_text, lsn_text = str(ident).split(":", 1)
        xid, lsn = int(xid_text), int(lsn_text)
    except ValueError:
        raise UnusableEvent(f"transaction id {ident!r} is not <txId>:<lsn>") from None
    if not isinstance(count, int) or count < 0:
        raise UnusableEvent("END event without event_count")
    return TransactionEnd(xid, lsn, count)
