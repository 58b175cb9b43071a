"""Decoded pgoutput messages -> whole transactions of :class:`walduck.records.ChangeRecord`.

A transaction is emitted only at its Commit, with every record's ``tx_index``/``tx_size`` counted
per Kafka key (``dataset_id``, or :data:`walduck.records.GLOBAL_KEY` for rows without a dataset) and ``tx_total``
over the whole transaction. A row the decoder cannot turn into a record becomes a
:class:`Rejected` (reason + raw pgoutput bytes) and the rest of the transaction goes on.
Non-transactional logical messages with the heartbeat prefix become ``Kind.HEARTBEAT`` records.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from connectors import pgoutput as po
from connectors import values
from connectors.errors import DecodeError
from connectors.rowjson import RowEncoder, make_encoder
from walduck.catalog_tables import dataset_of, routing_column
from walduck.errors import InvariantBroken
from walduck.records import ChangeRecord, Kind, Op, Source
from walduck.timeutil import iso, utcnow


class TransactionOrderError(InvariantBroken, RuntimeError):
    """Begin inside a transaction, Commit/change outside one: the stream is not what pgoutput sends."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that could not be decoded: goes to the DLQ."""

    reason: str
    detail: str
    raw: bytes
    lsn: int
    table: str | None
    xid: int | None
    commit_lsn: int | None = None


@dataclass(slots=True)
class Transaction:
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_ts: str
    records: list[ChangeRecord]
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    record: ChangeRecord
    lsn: int


def key_columns(rel: po.Relation) -> tuple[str, ...]:
    """``id`` when the table has one (every published table does; REPLICA IDENTITY FULL flags every column as
    key, so the flags alone would name them all), else the columns pgoutput flags as key."""
    if any(c.name == "id" for c in rel.columns):
        return ("id",)
    return tuple(c.name for c in rel.columns if c.is_key)


def key_of(rel: po.Relation, row: dict[str, Any]) -> dict[str, Any]:
    return {n: row.get(n) for n in key_columns(rel)}


def positions(keys: list[str | None]) -> list[tuple[int, int]]:
    """``(tx_index, tx_size)`` of each record of a transaction, counted per Kafka key (``None`` = global)."""
    sizes = Counter(keys)
    seen: dict[str | None, int] = {}
    out = []
    for key in keys:
        index = seen.get(key, 0)
        seen[key] = index + 1
        out.append((index, sizes[key]))
    return out


def number(records: list[ChangeRecord]) -> list[ChangeRecord]:
    """Fill ``tx_index``/``tx_size`` (per Kafka key) and ``tx_total`` in place order."""
    total = len(records)
    return [
        replace(r, tx_index=index, tx_size=size, tx_total=total)
        for r, (index, size) in zip(records, positions([r.dataset_id for r in records]), strict=True)
    ]


@dataclass(slots=True)
class _Change:
    table: str
    op: Op
    key: dict[str, Any] | None
    new: dict[str, Any] | orjson.Fragment | None
    old: dict[str, Any] | None
    dataset_id: str | None
    lsn: int


class TransactionAssembler:
    """Feed ``(wal_start_lsn, payload)`` of every XLogData; get a Transaction at each Commit."""

    def __init__(self, heartbeat_prefix: str = "walduck.heartbeat", row_encoder: str = "auto") -> None:
        self.relations = po.RelationCache()
        self.row_encoder = row_encoder
        self._encoders: dict[int, tuple[po.Relation, RowEncoder, tuple[str, ...]]] = {}
        self.heartbeat_prefix = heartbeat_prefix
        self._begin: po.Begin | None = None
        self._changes: list[_Change] = []
        self._rejected: list[Rejected] = []
        self._last_lsn = 0

    def encoder(self, oid: int) -> RowEncoder:
        """The INSERT row encoder of a relation seen in this stream (KeyError before its Relation)."""
        return self._encoders[oid][1]

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    def reset(self) -> None:
        """Forget a half-received transaction (after a reconnect the server sends it again)."""
        self._begin = None
        self._changes = []
        self._rejected = []

    def feed(self, wal_start: int, payload: bytes) -> Transaction | Heartbeat | None:
        # the hot path: an INSERT of a known relation, straight to JSON (connectors.rowjson)
        insert = po.insert_tuple(payload) if self._begin is not None else None
        if insert is not None:
            enc = self._encoders.get(insert[0])
            if enc is not None:
                out = enc[1].encode(payload, insert[1])
                if out is not None:
                    rel, keys = enc[0], enc[2]
                    new, wanted = out
                    ds = wanted[-1]  # (the routing column: dataset_of without a row dict)
                    # the row stays JSON bytes until the Commit: a large transaction holds ~1 KB per row
                    # instead of a dict of str (3x the memory, GC-tracked)
                    self._changes.append(
                        _Change(
                            rel.name,
                            Op.INSERT,
                            dict(zip(keys, wanted, strict=False)),
                            orjson.Fragment(new),
                            None,
                            None if ds is None else str(ds),
                            wal_start,
                        )
                    )
                    return None
        try:
            msg = po.decode(payload)
        except DecodeError as exc:
            if self._begin is None and payload[:1] in (b"B", b"C"):
                raise
            self._reject(exc, payload, wal_start, None)
            return None
        if isinstance(msg, po.Begin):
            if self._begin is not None:
                raise TransactionOrderError(f"Begin of xid {msg.xid} inside xid {self._begin.xid}")
            self._begin = msg
            self._changes = []
            self._rejected = []
            return None
        if isinstance(msg, po.Commit):
            return self._commit(msg)
        if isinstance(msg, po.Relation):
            self.relations.add(msg)
            keys = key_columns(msg)
            plan = self.relations.plan(msg.oid)
            assert plan is not None
            # the encoder returns these values beside the JSON; "" (no column has that name) reads as NULL for a
            # table whose rows belong to no dataset
            wanted = (*keys, routing_column(msg.name) or "")
            self._encoders[msg.oid] = (msg, make_encoder(plan, wanted, self.row_encoder), keys)
            return None
        if isinstance(msg, po.TypeMessage | po.Origin):
            return None
        if isinstance(msg, po.Message):
            return self._message(msg)
        if self._begin is None:
            raise TransactionOrderError(f"{type(msg).__name__} outside a transaction at {wal_start}")
        try:
            self._change(msg, wal_start)
        except DecodeError as exc:
            table = None
            oid = getattr(msg, "relation_oid", None)
            if oid is not None and oid in self.relations:
                table = self.relations.get(oid).name
            self._reject(exc, payload, wal_start, table)
        return None

    def _reject(self, exc: DecodeError, payload: bytes, lsn: int, table: str | None) -> None:
        xid = self._begin.xid if self._begin else None
        self._rejected.append(Rejected(exc.reason, exc.detail, bytes(payload), lsn, table, xid))

    def _change(self, msg: po.PgOutputMessage, lsn: int) -> None:
        if isinstance(msg, po.Truncate):
            for oid in msg.relation_oids:
                rel = self.relations.get(oid)
                self._changes.append(_Change(rel.name, Op.TRUNCATE, None, None, None, None, lsn))
            return
        if isinstance(msg, po.Insert):
            rel = self.relations.get(msg.relation_oid)
            new = self.relations.row(rel, msg.new)
            self._changes.append(
                _Change(rel.name, Op.INSERT, key_of(rel, new), new, None, dataset_of(rel.name, new), lsn)
            )
        elif isinstance(msg, po.Update):
            rel = self.relations.get(msg.relation_oid)
            old = self.relations.row(rel, msg.old) if msg.old is not None and msg.old_kind == "O" else None
            new = self.relations.row(rel, msg.new, fallback=old)
            ds = dataset_of(rel.name, new) or (dataset_of(rel.name, old) if old else None)
            self._changes.append(_Change(rel.name, Op.UPDATE, key_of(rel, new), new, old, ds, lsn))
            if old is not None and dataset_of(rel.name, old) not in (None, ds):
                # the row moved to another dataset: the old dataset must see it leave
                self._changes.append(
                    _Change(rel.name, Op.DELETE, key_of(rel, old), None, old, dataset_of(rel.name, old), lsn)
                )
        elif isinstance(msg, po.Delete):
            rel = self.relations.get(msg.relation_oid)
            if msg.old_kind == "O":
                old = self.relations.row(rel, msg.old)
                self._changes.append(
                    _Change(rel.name, Op.DELETE, key_of(rel, old), None, old, dataset_of(rel.name, old), lsn)
                )
            else:  # key only (REPLICA IDENTITY DEFAULT): no dataset to route by
                key = self.relations.key_row(rel, msg.old)
                self._changes.append(
                    _Change(rel.name, Op.DELETE, key, None, key, dataset_of(rel.name, key), lsn)
                )
        else:  # pragma: no cover - decode() returns no other change type
            raise DecodeError("unexpected message", type(msg).__name__)

    def _message(self, msg: po.Message) -> Heartbeat | None:
        if msg.prefix != self.heartbeat_prefix or msg.transactional:
            return None
        try:
            ts = values.convert(values.TIMESTAMPTZ, msg.content)
        except DecodeError:
            ts = iso(utcnow())
        record = ChangeRecord(
            kind=Kind.HEARTBEAT, source=Source.STREAM, lsn=msg.lsn, commit_lsn=msg.lsn, commit_ts=ts, key=None
        )
        return Heartbeat(record, msg.lsn)

    def _commit(self, msg: po.Commit) -> Transaction:
        begin = self._begin
        if begin is None:
            raise TransactionOrderError(f"Commit at {msg.commit_lsn} outside a transaction")
        commit_ts = iso(msg.commit_ts)
        changes = self._changes
        total = len(changes)
        xid = begin.xid
        commit_lsn = msg.commit_lsn
        change, stream = Kind.CHANGE, Source.STREAM
        # each record is built once, already numbered (this runs for every row of the stream)
        records = [
            ChangeRecord(
                change,
                stream,
                c.lsn,
                commit_lsn,
                commit_ts,
                c.table,
                c.op,
                c.key,
                c.new,
                c.old,
                c.dataset_id,
                xid,
                index,
                size,
                total,
            )
            for c, (index, size) in zip(changes, positions([c.dataset_id for c in changes]), strict=True)
        ]
        rejected = [
            Rejected(r.reason, r.detail, r.raw, r.lsn, r.table, r.xid, msg.commit_lsn) for r in self._rejected
        ]
        tx = Transaction(begin.xid, msg.commit_lsn, msg.end_lsn, commit_ts, records, rejected)
        self.reset()
        return tx
