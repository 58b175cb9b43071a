import orjson
import pytest

from walduck.config import DEFAULT_MAX_MESSAGE_BYTES
from walduck.deltas import Delta, DeltaKind, ShardChange
from walduck.records import GLOBAL_KEY, ChangeRecord, Kind, MalformedRecord, Op, Source


def _record(**kw: object) -> ChangeRecord:
    base: dict[str, object] = dict(
        kind=Kind.CHANGE,
        source=Source.STREAM,
        lsn=100,
        commit_lsn=120,
        commit_ts="2026-11-22T07:40:00+00:00",
        table="dataset_partitions",
        op=Op.INSERT,
        key={"id": "part-1"},
        new={"id": "part-1", "dataset_id": "ds-1"},
        dataset_id="ds-1",
        xid=7,
    )
    base.update(kw)
    return ChangeRecord(**base)  # type: ignore[arg-type]


def test_change_record_roundtrip() -> None:
    rec = _record()
    assert ChangeRecord.from_bytes(rec.to_bytes()) == rec
    assert rec.kafka_key() == b"ds-1"
    assert _record(dataset_id=None).kafka_key() == GLOBAL_KEY.encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (orjson.dumps({"v": 99}), "unknown schema version"),
        (orjson.dumps({"v": 1, "kind": "change", "source": "stream"}), "missing field"),
        (None, "tombstone"),
        (b"x" * (DEFAULT_MAX_MESSAGE_BYTES + 1), "exceeds"),
    ],
)
def test_malformed_records_name_their_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(MalformedRecord) as info:
        ChangeRecord.from_bytes(raw)
    assert reason in info.value.reason


def test_change_without_row_is_malformed() -> None:
    doc = orjson.loads(_record().to_bytes())
    doc["new"] = None
    with pytest.raises(MalformedRecord, match="without new row"):
        ChangeRecord.from_bytes(orjson.dumps(doc))
    doc = orjson.loads(_record().to_bytes())
    doc["tx_index"], doc["tx_size"] = 3, 2
    with pytest.raises(MalformedRecord, match="inconsistent"):
        ChangeRecord.from_bytes(orjson.dumps(doc))


def test_delta_roundtrip_and_key() -> None:
    delta = Delta(
        kind=DeltaKind.DELTA,
        src_partition=2,
        src_offset_from=10,
        src_offset_to=19,
        lsn_from=1,
        lsn_to=5,
        commit_ts_max="2026-11-22T07:40:00+00:00",
        raw_changes=12,
        dataset_id="ds-1",
        shards={"2024-01-01": ShardChange(upserts=[{"id": "p1", "file_path": "a.parquet"}], deletes=["p0"])},
    )
    back = Delta.from_bytes(delta.to_bytes())
    assert back == delta
    assert back.kafka_key() == b"ds-1/2024-01-01"
    assert back.entry_count == 2
    with pytest.raises(MalformedRecord, match="missing field"):
        Delta.from_bytes(orjson.dumps({"v": 1, "kind": "delta"}))
    bad = orjson.loads(delta.to_bytes())
    bad["shards"]["2024-01-01"]["upserts"] = [{"nope": 1}]
    with pytest.raises(MalformedRecord, match="without id"):
        Delta.from_bytes(orjson.dumps(bad))
