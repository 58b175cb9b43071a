"""The change-record schema: what the connector publishes to the changes topic.

One place defines it; the connector writes it, the compactor reads it. Encoded with orjson.
Version 1 fields (all present on every record; ``None`` where not applicable):

=============  =====================================================================
``v``          schema version, ``1``
``kind``       ``change`` (a row change), ``heartbeat`` (progress, no row),
               ``snapshot_done`` (end of the initial snapshot for this partition)
``source``     ``snapshot`` (read from the exported snapshot) or ``stream`` (WAL)
``table``      source table name without schema (``dataset_partitions`` …)
``op``         ``insert`` | ``update`` | ``delete`` | ``truncate`` | ``read`` (snapshot)
``key``        primary-key columns, e.g. ``{"id": "part-…"}``
``new``        the new row (insert/update/read), typed (ints, floats, bools, text
               arrays as lists; JSON/JSONB columns are PostgreSQL's own JSON text
               verbatim, so their numbers are exact: decode with
               :func:`walduck.jsonexact.loads_exact`; timestamps as walduck's instant
               text, see below). Inside the connector JSON columns and inserted rows
               may already be encoded (``orjson.Fragment``); on the wire it is always
               this JSON object
``old``        the old row (update/delete; complete because the connector sets
               REPLICA IDENTITY FULL on the catalog tables)
``dataset_id`` the dataset the row belongs to (the Kafka key); ``None`` for global rows
``lsn``        this record's WAL position (integer)
``commit_lsn`` its transaction's commit LSN (integer); equal for all records of one tx.
               For snapshot records: the snapshot's consistent point.
``xid``        transaction id (``None`` for snapshot/heartbeat)
``commit_ts``  transaction commit time, UTC ISO 8601 with offset
``tx_index``   0-based position of this record among the records of its transaction
               that share its Kafka key (``dataset_id``)
``tx_size``    number of records of its transaction that share its Kafka key, so a
               consumer of one Kafka partition knows when it holds the whole
               transaction's share for that dataset
``tx_total``   number of records in the whole transaction
=============  =====================================================================

Two optional fields (absent or ``None`` on nearly every record) keep a record within the one size limit
(``WALDUCK_MAX_MESSAGE_BYTES``; :mod:`walduck.sizepolicy`):

``old_same_as_new``  columns whose old value equals the new one, carried once in ``new`` (an
                     UPDATE of a row holding a large unchanged TOASTed value); :meth:`ChangeRecord.from_bytes`
                     puts them back into ``old``
``omitted``          columns no consumer reads, left out of ``new`` and ``old``; ``<column>.*``: that JSON
                     column keeps only the keys consumers read (``catalog_tables.CONSUMED_JSON_KEYS``);
                     ``["*"]``: the row itself was over the limit (no row, dead-lettered)

Timestamps (``timestamp``/``timestamptz`` columns) are UTC ISO 8601 with ``+00:00``
(``2024-01-01T00:00:00.500000+00:00``, fraction only when non-zero). PostgreSQL instants plain ISO 8601
cannot hold have this encoding (:mod:`walduck.timeutil`, round-trips exactly):
``infinity`` and ``-infinity``; years above 9999 as expanded years with a sign
(``+10000-01-01T00:00:00+00:00``); BC years as astronomical years, ``0000`` = 1 BC, ``-0001`` = 2 BC
(``'0001-01-01 00:30:00+01'`` is ``0000-12-31T23:30:00+00:00``).

Duplicates after a crash carry the same ``commit_lsn``/``lsn`` as the original, so a consumer
that remembers the highest applied ``(commit_lsn, lsn)`` drops them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from walduck.config import DEFAULT_MAX_MESSAGE_BYTES
from walduck.errors import Unprocessable
from walduck.jsonexact import dumps_exact, loads_exact

SCHEMA_VERSION = 1
GLOBAL_KEY = "__global__"
"""Kafka key for rows that belong to no dataset (storage targets): broadcast to every partition."""


def partition_of(key: str | bytes, partitions: int) -> int:
    """The topic partition of a Kafka key among ``partitions``: Kafka's default partitioner (murmur2 of the key
    bytes, positive, modulo the partition count), as the Java client and aiokafka's ``DefaultPartitioner`` do."""
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % max(partitions, 1)


OVERSIZE_REASON = "oversize record"
"""The DLQ reason of a stub (``omitted = ["*"]``): its dataset is rebuilt from PostgreSQL downstream."""

OMITTED_ALL = "*"
"""``omitted = ["*"]``: a record over the size limit that carries no row (:mod:`walduck.sizepolicy`)."""


class Kind(StrEnum):
    CHANGE = "change"
    HEARTBEAT = "heartbeat"
    SNAPSHOT_DONE = "snapshot_done"


class Source(StrEnum):
    SNAPSHOT = "snapshot"
    STREAM = "stream"


class Op(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    TRUNCATE = "truncate"
    READ = "read"


class MalformedRecord(Unprocessable, ValueError):
    """A record that cannot be decoded or violates the schema; ``reason`` goes to the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_object(raw: bytes | None, max_bytes: int, what: str) -> dict[str, Any]:
    """A Kafka value as one JSON object (exact numbers), within the one size limit; raises
    :class:`MalformedRecord` naming why (tombstone, oversize, not JSON, not an object). ``what`` names the
    message in the reason ("record", "delta"). The envelope check shared by change records and deltas."""
    if raw is None:
        raise MalformedRecord("empty value (tombstone)")
    if len(raw) > max_bytes:
        raise MalformedRecord(f"{what} of {len(raw)} bytes exceeds {max_bytes}")
    try:
        doc = loads_exact(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedRecord(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedRecord("not a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class SharePosition:
    """Where a record sits in its transaction share: what a consumer needs to account for a record it rejects
    (so the rest of the share still completes), read from a record too broken to decode
    (:func:`share_position`)."""

    dataset_id: str | None
    source: Source
    commit_lsn: int
    xid: int | None
    tx_index: int
    tx_size: int


def share_position(raw: bytes | None) -> SharePosition | None:
    """The share position of a malformed change record, when its bytes still name one; else ``None``."""
    if not raw:
        return None
    try:
        doc = loads_exact(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != Kind.CHANGE.value:
        return None
    try:
        source = Source(doc.get("source"))
    except ValueError:
        return None
    commit_lsn, xid = doc.get("commit_lsn"), doc.get("xid")
    index, size, dataset_id = doc.get("tx_index", 0), doc.get("tx_size", 1), doc.get("dataset_id")
    ints_ok = all(isinstance(x, int) and not isinstance(x, bool) for x in (commit_lsn, index, size))
    if not ints_ok or not 0 <= index < size or commit_lsn < 0:
        return None
    if (xid is not None and not isinstance(xid, int)) or (
        dataset_id is not None and not isinstance(dataset_id, str)
    ):
        return None
    return SharePosition(dataset_id, source, commit_lsn, xid, index, size)


@dataclass(slots=True)
class ChangeRecord:
    """One change (or heartbeat) as published. Treated as a value: nothing mutates a record after it is built
    (use ``dataclasses.replace``). Not ``frozen``: a frozen dataclass's ``__init__`` costs ~7x more
    (``object.__setattr__`` per field), and the connector builds one per committed row."""

    kind: Kind
    source: Source
    lsn: int
    commit_lsn: int
    commit_ts: str
    table: str | None = None
    op: Op | None = None
    key: dict[str, Any] | None = None
    new: dict[str, Any] | orjson.Fragment | None = None
    old: dict[str, Any] | None = None
    dataset_id: str | None = None
    xid: int | None = None
    tx_index: int = 0
    tx_size: int = 1
    tx_total: int = 1
    old_same_as_new: list[str] | None = None
    omitted: list[str] | None = None
    v: int = field(default=SCHEMA_VERSION)

    @property
    def row(self) -> dict[str, Any]:
        """The row this record is about: ``new`` if present, else ``old`` (decoded records only)."""
        if isinstance(self.new, dict):
            return self.new
        return self.old or {}

    def kafka_key(self) -> bytes:
        return (self.dataset_id or GLOBAL_KEY).encode()

    def to_bytes(self) -> bytes:
        # orjson serialises the dataclass itself (fields in order, enums by value, and the connector's
        # orjson.Fragment JSON columns verbatim), without dataclasses.asdict's deep copy
        return dumps_exact(self)

    @classmethod
    def from_bytes(cls, raw: bytes | None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> ChangeRecord:
        """Decode and validate; raises :class:`MalformedRecord` with a reason. ``max_bytes`` is the one size
        limit (``WALDUCK_MAX_MESSAGE_BYTES``, :mod:`walduck.sizepolicy`)."""
        doc = decode_object(raw, max_bytes, "record")
        version = doc.get("v")
        if version != SCHEMA_VERSION:
            raise MalformedRecord(f"unknown schema version {version!r} (expected {SCHEMA_VERSION})")
        try:
            kind = Kind(doc["kind"])
            source = Source(doc["source"])
            lsn, commit_lsn = doc["lsn"], doc["commit_lsn"]
            commit_ts = doc["commit_ts"]
        except KeyError as exc:
            raise MalformedRecord(f"missing field {exc.args[0]!r}") from None
        except ValueError as exc:
            raise MalformedRecord(str(exc)) from None
        if not isinstance(lsn, int) or not isinstance(commit_lsn, int) or lsn < 0 or commit_lsn < 0:
            raise MalformedRecord("lsn and commit_lsn must be non-negative integers")
        if not isinstance(commit_ts, str):
            raise MalformedRecord("commit_ts must be an ISO 8601 string")
        omitted = doc.get("omitted")
        if omitted is not None and (
            not isinstance(omitted, list) or not all(isinstance(c, str) for c in omitted)
        ):
            raise MalformedRecord("omitted must be a list of column names")
        if omitted and OMITTED_ALL in omitted:
            raise MalformedRecord(f"{OVERSIZE_REASON}: its row exceeded the size limit (omitted *)")
        same = doc.get("old_same_as_new")
        if same is not None:
            old_row, new_row = doc.get("old"), doc.get("new")
            if (
                not isinstance(same, list)
                or not isinstance(old_row, dict)
                or not isinstance(new_row, dict)
                or not all(isinstance(c, str) and c in new_row for c in same)
            ):
                raise MalformedRecord("old_same_as_new without old and new rows holding those columns")
            for column in same:  # carried once, in new: the consumer sees the complete old row
                old_row[column] = new_row[column]
        op = None
        if kind is Kind.CHANGE:
            try:
                op = Op(doc.get("op"))
            except ValueError:
                raise MalformedRecord(f"unknown op {doc.get('op')!r}") from None
            if not isinstance(doc.get("table"), str):
                raise MalformedRecord("change record without table")
            if op in (Op.INSERT, Op.UPDATE, Op.READ) and not isinstance(doc.get("new"), dict):
                raise MalformedRecord(f"{op} record without new row")
            if op is Op.DELETE and not isinstance(doc.get("old") or doc.get("key"), dict):
                raise MalformedRecord("delete record without old row or key")
        tx_index, tx_size, tx_total = doc.get("tx_index", 0), doc.get("tx_size", 1), doc.get("tx_total", 1)
        if not all(isinstance(x, int) for x in (tx_index, tx_size, tx_total)) or not 0 <= tx_index < tx_size:
            raise MalformedRecord("tx_index/tx_size/tx_total inconsistent")
        return cls(
            kind=kind,
            source=source,
            lsn=lsn,
            commit_lsn=commit_lsn,
            commit_ts=commit_ts,
            table=doc.get("table"),
            op=op,
            key=doc.get("key"),
            new=doc.get("new"),
            old=doc.get("old"),
            dataset_id=doc.get("dataset_id"),
            xid=doc.get("xid"),
            tx_index=tx_index,
            tx_size=tx_size,
            tx_total=tx_total,
            old_same_as_new=same,
            omitted=omitted,
        )
