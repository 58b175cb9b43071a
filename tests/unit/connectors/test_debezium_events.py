"""Debezium events as Debezium 3.6.1 wrote them here (captured from a real run: Connect standalone, pgoutput,
JSON converter without schemas, provide.transaction.metadata=true) -> walduck's record fields."""

from __future__ import annotations

import orjson
import pytest

from connectors.debezium.errors import UnusableEvent
from connectors.debezium.events import parse_event, parse_transaction, table_of
from walduck.jsonexact import dumps_exact, loads_exact
from walduck.records import Op

DATASET_INSERT = (
    b'{"before":null,"after":{"id":"ds-x","slug":"dsx","name":"dsx","description":null,"status":"active",'
    b'"write_format":"parquet","default_storage_target_id":"st-x","metadata":"{\\"a\\": 1.50}",'
    b'"created_at":"2026-12-03T16:40:20.220921Z","updated_at":"2026-12-03T16:40:20Z"},'
    b'"source":{"version":"3.6.1.Final","connector":"postgresql","name":"dbzx2","ts_ms":1796316020222,'
    b'"snapshot":"false","db":"wdbench","sequence":"[null,\\"831956368\\"]","ts_us":1796316020222881,'
    b'"ts_ns":1796316020222881000,"schema":"timestore","table":"datasets","txId":948,"lsn":831956368,'
    b'"xmin":null,"origin":null,"origin_lsn":null},'
    b'"transaction":{"id":"948:831956368","total_order":2,"data_collection_order":1},"op":"c",'
    b'"ts_ms":1796316020291,"ts_us":1796316020291810,"ts_ns":1796316020291810500}'
)
END = (
    b'{"status":"END","id":"948:831957256","event_count":2,"data_collections":[{"data_collection":'
    b'"timestore.storage_targets","event_count":1},{"data_collection":"timestore.datasets","event_count":1}],'
    b'"ts_ms":1796316020222}'
)
BEGIN = b'{"status":"BEGIN","id":"948:831955792","event_count":null,"data_collections":null,"ts_ms":1796316020222}'


def test_a_dataset_insert_becomes_walduck_values() -> None:
    ev = parse_event(table_of("dbzx2.timestore.datasets", "dbzx2", "timestore"), DATASET_INSERT)
    assert ev is not None
    assert (ev.table, ev.op, ev.xid, ev.total_order, ev.lsn) == ("datasets", Op.INSERT, 948, 2, 831956368)
    assert ev.dataset_id == "ds-x" and ev.key == {"id": "ds-x"} and ev.old is None
    assert ev.commit_ts == "2026-12-03T16:40:20.222881+00:00"
    new = loads_exact(dumps_exact(ev.new))
    # jsonb verbatim (1.50 stays exact), instants in walduck's text, fraction only when non-zero
    assert dumps_exact(ev.new).count(b'"metadata":{"a": 1.50}') == 1
    assert new["created_at"] == "2026-12-03T16:40:20.220921+00:00"
    assert new["updated_at"] == "2026-12-03T16:40:20+00:00"


def test_the_schema_envelope_is_unwrapped() -> None:
    wrapped = orjson.dumps({"schema": {"type": "struct"}, "payload": orjson.loads(DATASET_INSERT)})
    a = parse_event("datasets", wrapped)
    b = parse_event("datasets", DATASET_INSERT)
    assert a is not None and b is not None and dumps_exact(a.new) == dumps_exact(b.new)


def test_transaction_events() -> None:
    end = parse_transaction(END)
    assert end is not None and (end.xid, end.commit_lsn, end.event_count) == (948, 831957256, 2)
    assert parse_transaction(BEGIN) is None
    assert parse_transaction(None) is None


def _mutated(**changes: object) -> bytes:
    doc = orjson.loads(DATASET_INSERT)
    for path, value in changes.items():
        node = doc
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_mutated(transaction=KeyError), "provide.transaction.metadata=true"),
        (_mutated(after__metadata="__debezium_unavailable_value"), "REPLICA IDENTITY FULL"),
        (_mutated(after__metadata="{not json"), "not valid JSON"),
        (_mutated(after__created_at=1796316020222881), "ZonedTimestamp"),
        (_mutated(op="t"), "truncate"),
        (_mutated(op="x"), "unknown op"),
        (_mutated(source__lsn=KeyError), "source.lsn"),
        (b"{nope", "not JSON"),
    ],
)
def test_what_cannot_be_exact_is_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(UnusableEvent, match=reason):
        parse_event("datasets", raw)


def test_a_tombstone_is_nothing_and_foreign_topics_are_refused() -> None:
    assert parse_event("datasets", None) is None
    with pytest.raises(UnusableEvent, match="not a published catalog table"):
        table_of("dbzx2.timestore.audit_log", "dbzx2", "timestore")
