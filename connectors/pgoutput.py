"""Pure decoder of the pgoutput logical replication protocol (version 1; message formats of
https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html).

``decode(payload)`` turns one XLogData payload into a message dataclass. Row values stay raw
(``TupleData``: text bytes per column, ``None`` for NULL, :data:`UNCHANGED` for unchanged TOAST);
``RelationCache.row`` / ``key_row`` turn them into typed Python values by column type OID, raising
:class:`DecodeError` (with the reason) when a value cannot be represented. ``insert_tuple`` frames the hot
path's INSERT without building a message.

This module owns all pgoutput framing; what a column's text means is :mod:`connectors.values`' job.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connectors import values
from connectors.errors import DecodeError
from walduck.timeutil import pg_micros_to_datetime


class _Unchanged:
    """Marker for an unchanged TOASTed value ('u'): the server did not send it."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
TupleData = list[bytes | _Unchanged | None]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_mod: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeMessage:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    old_kind: str | None  # 'K' (key columns), 'O' (whole old row), None (not sent)
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old_kind: str
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int  # 1 = CASCADE, 2 = RESTART IDENTITY
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgOutputMessage = (
    Begin | Commit | Origin | Relation | TypeMessage | Insert | Update | Delete | Truncate | Message
)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def _take(self, fmt: struct.Struct) -> Any:
        if self.pos + fmt.size > len(self.buf):
            raise DecodeError("truncated message", f"need {fmt.size} bytes at {self.pos}")
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def int8(self) -> int:
        return self._take(_I8)

    def int16(self) -> int:
        return self._take(_I16)

    def int32(self) -> int:
        return self._take(_I32)

    def int64(self) -> int:
        return self._take(_I64)

    def byte(self) -> str:
        if self.pos >= len(self.buf):
            raise DecodeError("truncated message", f"need 1 byte at {self.pos}")
        value = chr(self.buf[self.pos])
        self.pos += 1
        return value

    def string(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise DecodeError("truncated message", "unterminated string")
        value = self.buf[self.pos : end].decode()
        self.pos = end + 1
        return value

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise DecodeError("truncated message", f"need {n} bytes at {self.pos}")
        value = self.buf[self.pos : self.pos + n]
        self.pos += n
        return value

    def tuple_data(self) -> TupleData:
        data: TupleData = []
        for _ in range(self.int16()):
            kind = self.byte()
            if kind == "n":
                data.append(None)
            elif kind == "u":
                data.append(UNCHANGED)
            elif kind in ("t", "b"):
                data.append(self.raw(self.int32()))
            else:
                raise DecodeError("unknown tuple data kind", repr(kind))
        return data


_I8 = struct.Struct("!b")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_I64 = struct.Struct("!q")
_U32 = struct.Struct("!I")


def _ts(micros: int) -> datetime:
    return pg_micros_to_datetime(micros)


def decode(payload: bytes) -> PgOutputMessage:
    """One pgoutput message (protocol version 1, non-streamed)."""
    if not payload:
        raise DecodeError("empty message")
    r = _Reader(payload)
    tag = r.byte()
    if tag == "B":
        return Begin(
            final_lsn=r.int64() & 0xFFFFFFFFFFFFFFFF, commit_ts=_ts(r.int64()), xid=r.int32() & 0xFFFFFFFF
        )
    if tag == "C":
        flags = r.int8()
        return Commit(flags=flags, commit_lsn=r.int64(), end_lsn=r.int64(), commit_ts=_ts(r.int64()))
    if tag == "O":
        return Origin(commit_lsn=r.int64(), name=r.string())
    if tag == "R":
        oid = r.int32() & 0xFFFFFFFF
        namespace, name = r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.int16()):
            flags = r.int8()
            col_name = r.string()
            columns.append(Column(col_name, r.int32() & 0xFFFFFFFF, r.int32(), bool(flags & 1)))
        return Relation(oid, namespace, name, identity, tuple(columns))
    if tag == "Y":
        return TypeMessage(oid=r.int32() & 0xFFFFFFFF, namespace=r.string(), name=r.string())
    if tag == "I":
        oid = r.int32() & 0xFFFFFFFF
        if r.byte() != "N":
            raise DecodeError("malformed insert", "expected N")
        return Insert(oid, r.tuple_data())
    if tag == "U":
        oid = r.int32() & 0xFFFFFFFF
        kind = r.byte()
        old_kind, old = None, None
        if kind in ("K", "O"):
            old_kind, old = kind, r.tuple_data()
            kind = r.byte()
        if kind != "N":
            raise DecodeError("malformed update", f"expected N, got {kind!r}")
        return Update(oid, old_kind, old, r.tuple_data())
    if tag == "D":
        oid = r.int32() & 0xFFFFFFFF
        kind = r.byte()
        if kind not in ("K", "O"):
            raise DecodeError("malformed delete", f"expected K or O, got {kind!r}")
        return Delete(oid, kind, r.tuple_data())
    if tag == "T":
        count = r.int32()
        options = r.int8()
        return Truncate(options, tuple(r.int32() & 0xFFFFFFFF for _ in range(count)))
    if tag == "M":
        flags = r.int8()
        lsn = r.int64()
        prefix = r.string()
        return Message(bool(flags & 1), lsn, prefix, r.raw(r.int32()))
    raise DecodeError("unknown message type", repr(tag))


def insert_tuple(payload: bytes) -> tuple[int, int] | None:
    """``(relation oid, TupleData offset)`` when ``payload`` is an INSERT ('I' oid 'N' TupleData), else ``None``:
    the hot path's framing, without building an :class:`Insert`."""
    if len(payload) >= 8 and payload[0] == 73 and payload[5] == 78:  # 'I' … 'N'
        return int.from_bytes(payload[1:5]), 6
    return None


@dataclass(frozen=True, slots=True)
class RowPlan:
    """How to turn one relation's TupleData into a typed row in one pass."""

    relation: Relation
    names: tuple[str, ...]
    converters: tuple[Callable[[bytes], Any], ...]

    @classmethod
    def of(cls, rel: Relation) -> RowPlan:
        return cls(
            rel,
            tuple(c.name for c in rel.columns),
            tuple(values.row_converter(c.type_oid) for c in rel.columns),
        )

    def decode(self, buf: bytes, pos: int) -> dict[str, Any] | None:
        """Parse and convert the TupleData at ``pos`` in one loop: the decoder's hot path (one call per
        inserted row; JSON columns stay ``orjson.Fragment``, see :mod:`connectors.values`). ``None`` when
        the row needs the careful path: unchanged TOAST, a value a fast converter refuses, a column count
        mismatch or a truncated message."""
        try:
            (count,) = _I16.unpack_from(buf, pos)
            if count != len(self.names):
                return None
            pos += 2
            unpack_len = _U32.unpack_from  # unsigned: pos only grows, so one check at the end suffices
            row: dict[str, Any] = {}
            for name, conv in zip(self.names, self.converters, strict=True):
                kind = buf[pos]
                if kind == 116:  # 't'
                    start = pos + 5
                    pos = start + unpack_len(buf, pos + 1)[0]
                    row[name] = conv(buf[start:pos])
                elif kind == 110:  # 'n'
                    row[name] = None
                    pos += 1
                else:
                    return None
        except (ValueError, KeyError, IndexError, struct.error, DecodeError):  # (UnicodeDecodeError too)
            return None
        # a length running past the end left a short value behind: refuse the whole row
        return row if pos == len(buf) else None


class RelationCache:
    """Relation messages by oid (they precede a relation's first use and every schema change)."""

    def __init__(self) -> None:
        self._by_oid: dict[int, Relation] = {}
        self._plans: dict[int, RowPlan] = {}

    def add(self, rel: Relation) -> None:
        self._by_oid[rel.oid] = rel
        self._plans[rel.oid] = RowPlan.of(rel)

    def get(self, oid: int) -> Relation:
        rel = self._by_oid.get(oid)
        if rel is None:
            raise DecodeError("unknown relation", f"oid {oid} before its Relation message")
        return rel

    def plan(self, oid: int) -> RowPlan | None:
        return self._plans.get(oid)

    def __contains__(self, oid: int) -> bool:
        return oid in self._by_oid

    @staticmethod
    def row(rel: Relation, data: TupleData, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
        """Typed row. Unchanged TOAST values are taken from ``fallback`` (the old row) when it has
        them; otherwise the row cannot be completed and :class:`DecodeError` is raised."""
        if len(data) != len(rel.columns):
            raise DecodeError(
                "column count mismatch", f"{rel.name}: {len(data)} values for {len(rel.columns)} columns"
            )
        row: dict[str, Any] = {}
        for col, raw in zip(rel.columns, data, strict=True):
            if raw is None:
                row[col.name] = None
            elif raw is UNCHANGED:
                if fallback is None or col.name not in fallback:
                    raise DecodeError("unchanged toast without old value", f"{rel.name}.{col.name}")
                row[col.name] = fallback[col.name]
            else:
                assert isinstance(raw, bytes)
                row[col.name] = values.convert(col.type_oid, raw)
        return row

    @staticmethod
    def key_row(rel: Relation, key: TupleData) -> dict[str, Any]:
        """Typed key columns of a key-only old tuple (DELETE/UPDATE under REPLICA IDENTITY DEFAULT)."""
        key_cols = [c for c in rel.columns if c.is_key]
        return {
            c.name: (values.convert(c.type_oid, v) if isinstance(v, bytes) else None)
            for c, v in zip(key_cols, key, strict=False)
        }
