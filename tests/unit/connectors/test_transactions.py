"""Transaction assembly (captured pgoutput payloads -> ChangeRecords) and the flush tracker's invariants."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import orjson
import pytest

from connectors import pgoutput as po
from connectors.connector import FlushTracker, LSNRegression, UnackedConfirmation
from connectors.transactions import (
    Heartbeat,
    Transaction,
    TransactionAssembler,
    TransactionOrderError,
    number,
)
from walduck.lsn import parse_lsn
from walduck.records import GLOBAL_KEY, ChangeRecord, Kind, Op, Source

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "pgoutput_v1.json").read_text())
MESSAGES = [(parse_lsn(m["lsn"]), bytes.fromhex(m["hex"])) for m in FIXTURE["messages"]]


def same_record(a: ChangeRecord, b: ChangeRecord) -> bool:
    """Equal as the consumer sees them (JSON columns may be parsed values or the connector's Fragments)."""
    return orjson.loads(a.to_bytes()) == orjson.loads(b.to_bytes())


def assemble() -> list[Transaction | Heartbeat]:
    asm = TransactionAssembler("walduck.heartbeat")
    out = [asm.feed(lsn, payload) for lsn, payload in MESSAGES]
    assert not asm.in_transaction
    return [item for item in out if item is not None]


def test_whole_transactions_with_per_key_numbering() -> None:
    items = assemble()
    assert [type(i).__name__ for i in items] == ["Transaction"] * 4 + ["Heartbeat", "Transaction"]
    global_tx, two_parts, *_ = items
    assert isinstance(global_tx, Transaction)
    (st,) = global_tx.records
    assert (st.table, st.op, st.dataset_id, st.kafka_key()) == (
        "storage_targets",
        Op.INSERT,
        None,
        GLOBAL_KEY.encode(),
    )
    assert isinstance(two_parts, Transaction)
    a, b = two_parts.records
    assert (a.dataset_id, a.tx_index, a.tx_size, a.tx_total) == ("ds-1", 0, 1, 2)
    assert (b.dataset_id, b.tx_index, b.tx_size, b.tx_total) == ("ds-2", 0, 1, 2)
    assert a.key == {"id": "p-1"} and a.commit_lsn == b.commit_lsn == two_parts.commit_lsn
    assert a.lsn < b.lsn <= two_parts.commit_lsn < two_parts.end_lsn
    assert a.xid == two_parts.xid and a.source is Source.STREAM
    for r in (a, b):  # every record survives the schema's own validation
        assert same_record(ChangeRecord.from_bytes(r.to_bytes()), r)


def test_update_fills_unchanged_toast_from_old_row_and_delete_routes_by_old_row() -> None:
    _, _, update, delete, _, _ = assemble()
    assert isinstance(update, Transaction) and isinstance(delete, Transaction)
    (u,) = update.records
    assert u.op is Op.UPDATE and u.dataset_id == "ds-1"
    assert u.new is not None and u.old is not None
    assert u.new["row_count"] == 2000 and u.old["row_count"] == 1000
    assert u.new["metadata"] == u.old["metadata"]
    (d,) = delete.records
    assert d.op is Op.DELETE and d.new is None and d.dataset_id == "ds-2" and d.key == {"id": "p-2"}


def test_heartbeat_and_truncate_are_broadcast_records() -> None:
    *_, hb, trunc = assemble()
    assert isinstance(hb, Heartbeat)
    assert hb.record.kind is Kind.HEARTBEAT and hb.record.commit_ts == "2024-01-01T00:00:00+00:00"
    assert hb.record.lsn == hb.lsn == hb.record.commit_lsn
    assert isinstance(trunc, Transaction)
    (t,) = trunc.records
    assert (t.op, t.table, t.dataset_id) == (Op.TRUNCATE, "dataset_partitions", None)


def test_undecodable_row_is_rejected_and_the_transaction_goes_on() -> None:
    asm = TransactionAssembler()
    lsn0, begin = MESSAGES[4]
    asm.feed(lsn0, begin)
    asm.feed(0, MESSAGES[5][1])  # Relation
    rel = po.decode(MESSAGES[5][1])
    assert isinstance(rel, po.Relation)
    # an Insert whose start_time PostgreSQL could never send (no such day)
    values = [b"p-9", b"ds-9", None, None, None, None, None, None, b"2023-02-29 00:00:00+01", b"{}"]
    body = b"".join(b"n" if v is None else b"t" + struct.pack("!i", len(v)) + v for v in values)
    bad = b"I" + struct.pack("!I", rel.oid) + b"N" + struct.pack("!h", len(values)) + body
    asm.feed(lsn0 + 8, bad)
    asm.feed(lsn0 + 16, MESSAGES[6][1])  # a good insert
    tx = asm.feed(lsn0 + 24, MESSAGES[8][1])  # Commit
    assert isinstance(tx, Transaction)
    assert [r.key for r in tx.records] == [{"id": "p-1"}]
    assert tx.records[0].tx_size == 1 and tx.records[0].tx_total == 1
    (rej,) = tx.rejected
    assert rej.reason == "bad timestamp" and rej.raw == bad
    assert rej.table == "dataset_partitions" and rej.commit_lsn == tx.commit_lsn


def test_order_errors() -> None:
    asm = TransactionAssembler()
    with pytest.raises(TransactionOrderError):
        asm.feed(1, MESSAGES[3][1])  # Commit without Begin
    asm.feed(1, MESSAGES[0][1])
    with pytest.raises(TransactionOrderError):
        asm.feed(2, MESSAGES[0][1])  # Begin inside a transaction


def test_number_counts_per_key() -> None:
    def rec(ds: str | None) -> ChangeRecord:
        return ChangeRecord(
            Kind.CHANGE, Source.STREAM, 1, 2, "t", table="x", op=Op.INSERT, new={}, dataset_id=ds
        )

    out = number([rec("a"), rec(None), rec("a"), rec("b"), rec("a")])
    assert [(r.tx_index, r.tx_size) for r in out] == [(0, 3), (0, 1), (1, 3), (0, 1), (2, 3)]
    assert {r.tx_total for r in out} == {5}


def test_flush_tracker_confirms_only_acked_prefix() -> None:
    t = FlushTracker(confirmed=100)
    t.enqueue(200)
    t.enqueue(300)
    assert not t.advance_idle(1000, in_transaction=False)  # things in flight: keepalive must not move flush
    assert t.confirmed == 100
    with pytest.raises(UnackedConfirmation):
        t.acked(300)
    t.acked(200)
    assert t.confirmed == 200
    t.acked(300)
    assert t.confirmed == 300
    assert not t.advance_idle(1000, in_transaction=True)
    assert t.advance_idle(1000, in_transaction=False) and t.confirmed == 1000
    with pytest.raises(LSNRegression):
        t.enqueue(900)


def test_publisher_encoding_is_the_schema_encoding() -> None:
    from connectors.publisher import encode_record

    items = assemble()
    records = [r for i in items if isinstance(i, Transaction) for r in i.records]
    records += [i.record for i in items if isinstance(i, Heartbeat)]
    assert len(records) >= 6
    for r in records:
        assert encode_record(r) == r.to_bytes()
        assert same_record(ChangeRecord.from_bytes(encode_record(r)), r)


@pytest.mark.parametrize("encoder", ["native", "python"])
def test_insert_fast_path_carries_postgres_json_verbatim(encoder: str) -> None:
    """Inserts go straight to JSON (connectors.rowjson) and are kept as a Fragment; the record's JSON
    equals what the careful path (parsed values) gives, with either row encoder."""
    asm = TransactionAssembler(row_encoder=encoder)
    items = [x for x in (asm.feed(lsn, payload) for lsn, payload in MESSAGES) if x is not None]
    inserts = [r for i in items if isinstance(i, Transaction) for r in i.records if r.op is Op.INSERT]
    fragments = [r for r in inserts if isinstance(r.new, orjson.Fragment)]  # encoded while hot
    assert fragments, "no insert took the fast path"
    careful = TransactionAssembler(row_encoder=encoder)
    for _lsn, payload in MESSAGES:
        msg = po.decode(payload)
        if isinstance(msg, po.Relation):
            careful.feed(0, payload)
        if isinstance(msg, po.Insert) and msg.relation_oid in careful.relations:
            fast = careful.encoder(msg.relation_oid).encode(payload, 6)
            row = careful.relations.row(careful.relations.get(msg.relation_oid), msg.new)
            assert fast is not None
            assert orjson.loads(fast[0]) == orjson.loads(orjson.dumps(row))


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda p: p[:-3], "truncated message"),  # last value cut short
        (lambda p: p[:9] + struct.pack("!I", 10**6) + p[13:], "truncated message"),  # 1st length past the end
        (lambda p: p + b"x", None),  # trailing garbage: decode() ignores it, the fast path must not accept it
    ],
)
@pytest.mark.parametrize("encoder", ["native", "python"])
def test_insert_fast_path_refuses_malformed_payloads(
    mangle: object, reason: str | None, encoder: str
) -> None:
    asm = TransactionAssembler(row_encoder=encoder)
    asm.feed(*MESSAGES[4])  # Begin
    asm.feed(0, MESSAGES[5][1])  # Relation
    good = MESSAGES[6][1]
    oid = po.decode(good).relation_oid  # type: ignore[union-attr]
    assert asm.encoder(oid).encode(good, 6) is not None
    bad = mangle(good)  # type: ignore[operator]
    assert asm.encoder(oid).encode(bad, 6) is None
    asm.feed(MESSAGES[6][0], bad)
    tx = asm.feed(*MESSAGES[8])  # Commit
    assert isinstance(tx, Transaction)
    if reason is None:  # the careful path decides (here: it accepts the row, as before the fast path)
        assert len(tx.records) + len(tx.rejected) == 1
    else:
        assert tx.records == [] and [r.reason for r in tx.rejected] == [reason]
