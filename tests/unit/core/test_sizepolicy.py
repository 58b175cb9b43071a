"""Issue 16, finding 4: one size limit from producer to consumers, and an oversize strategy that keeps the change.

A dataset with a 2.2 MB name, then ``UPDATE datasets SET status='inactive'``: the record carried the TOASTed
name in both ``new`` and ``old`` (4.4 MB) and the compactor, whose limit (4 MiB) differed from the producer's
(8 MiB) and the topic's (16 MiB), rejected it: the context still said ``active``.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from connectors.publisher import encode_record
from pipeline.compaction import Compactor
from walduck import metrics
from walduck.config import DEFAULT_MAX_MESSAGE_BYTES, WalduckSettings
from walduck.records import ChangeRecord, Kind, MalformedRecord, Op, Source
from walduck.sizepolicy import fit_record

ROOT = Path(__file__).resolve().parents[3]


def _update(name: str, old_name: str | None = None, stats: str = "{}") -> ChangeRecord:
    row = {"id": "ds-1", "slug": "ds-1", "name": name, "status": "inactive", "column_statistics": stats}
    old = {**row, "status": "active", "name": name if old_name is None else old_name}
    return ChangeRecord(
        Kind.CHANGE,
        Source.STREAM,
        10,
        20,
        "2024-01-01T00:00:00+00:00",
        "datasets",
        Op.UPDATE,
        {"id": "ds-1"},
        row,
        old,
        "ds-1",
        7,
    )


def test_one_setting_is_the_limit_everywhere() -> None:
    assert WalduckSettings().max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    # no other record size limit in the producer, compactor or schema modules (they were 8, 4 and 32 MiB)
    for path in ("connectors/publisher.py", "walduck/records.py", "walduck/deltas.py", "pipeline/runner.py"):
        text = (ROOT / path).read_text()
        assert "MAX_RECORD_BYTES" not in text and "8 * 1024 * 1024" not in text, path


def test_unchanged_large_value_is_carried_once_and_restored() -> None:
    rec = _update("n" * 2_200_000)
    limit = 4 * 1024 * 1024
    assert len(rec.to_bytes()) > limit  # the failing case: 4.4 MB
    value, strategy = fit_record(rec, limit)
    assert strategy == "old_same_as_new" and len(value) < 2_300_000
    assert orjson.loads(value)["old_same_as_new"] == ["column_statistics", "id", "name", "slug"]
    back = ChangeRecord.from_bytes(value, limit)
    assert back.old == rec.old and back.new == rec.new
    # the compactor applies it: the context will say inactive
    comp = Compactor(0)
    comp.feed(back, 0)
    (delta,) = comp.flush()
    assert delta.dataset is not None and delta.dataset["status"] == "inactive"


def test_unread_columns_are_omitted_then_stub_keeps_the_share() -> None:
    limit = 1_000_000
    rec = _update("small", old_name="smaller", stats="s" * 900_000)
    value, strategy = fit_record(rec, limit)
    # column_statistics is unchanged too: carried once is enough here
    assert strategy == "old_same_as_new"
    rec = _update("small", old_name="smaller", stats="s" * 1_200_000)
    value, strategy = fit_record(rec, limit)
    assert strategy == "omitted_columns" and orjson.loads(value)["omitted"] == ["column_statistics"]
    back = ChangeRecord.from_bytes(value, limit)
    assert back.new["status"] == "inactive" and "column_statistics" not in back.new
    rec = _update("n" * 1_200_000, old_name="m")
    value, strategy = fit_record(rec, limit)
    assert strategy == "stub" and len(value) < 1000
    doc = orjson.loads(value)
    assert (doc["tx_index"], doc["tx_size"], doc["key"], doc["omitted"]) == (0, 1, {"id": "ds-1"}, ["*"])
    try:
        ChangeRecord.from_bytes(value, limit)
    except MalformedRecord as exc:
        assert "oversize" in exc.reason
    else:  # pragma: no cover
        raise AssertionError("a stub is not a change a consumer may apply")


def test_publisher_counts_oversize_records() -> None:
    def count() -> float:
        return (
            metrics.REGISTRIES["connector"].get_sample_value(
                "walduck_connector_oversize_records_total", {"strategy": "old_same_as_new"}
            )
            or 0.0
        )

    before = count()
    rec = _update("n" * 600_000)
    assert len(encode_record(rec, 1_000_000)) < 700_000
    assert count() == before + 1
    assert encode_record(_update("x"), 1_000_000) == _update("x").to_bytes()
    assert count() == before + 1


def test_a_pre_encoded_insert_whose_metadata_is_too_large_keeps_the_consumed_keys() -> None:
    """The connector hands INSERT rows over pre-encoded (orjson.Fragment); an oversize one whose unread
    columns are not enough is cut to the metadata keys consumers read, and the compactor's entry is the same
    as for the whole row."""
    from pipeline.compaction import partition_entry

    row = {
        "id": "p1",
        "dataset_id": "ds-1",
        "manifest_id": "dm-1",
        "file_path": "a.parquet",
        "column_statistics": {"x": "s" * 100},
        "metadata": {"schemaVersionId": "sv-9", "tableName": "metrics", "stats": "s" * 50_000, "n": 1.50},
    }
    raw = orjson.dumps(row)
    rec = ChangeRecord(
        kind=Kind.CHANGE,
        source=Source.STREAM,
        lsn=1,
        commit_lsn=2,
        commit_ts="2026-12-03T00:00:00+00:00",
        table="dataset_partitions",
        op=Op.INSERT,
        key={"id": "p1"},
        new=orjson.Fragment(raw),
        dataset_id="ds-1",
    )
    value, strategy = fit_record(rec, 10_000)
    assert strategy == "projected_json", strategy
    back = ChangeRecord.from_bytes(value, 10_000)
    assert back.omitted == ["column_statistics", "metadata.*"]
    assert back.new["metadata"] == {"schemaVersionId": "sv-9", "tableName": "metrics"}
    assert partition_entry(back.new, None) == partition_entry(row, None)
