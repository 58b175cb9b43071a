"""The published record contract (walduck/schemas/, docs/api.md "Record contract") against the code.

1. The schemas are valid draft 2020-12 documents and ship in the package.
2. Everything the code writes validates: change records of random catalog histories (``CatalogModel``), in
   every size-policy shape (as is, ``old_same_as_new``, ``omitted`` columns, the ``["*"]`` stub), and every
   delta the real :class:`~pipeline.compaction.Compactor` seals from them.
3. Readers ignore what they do not know: a valid record with unknown properties decodes to the same value.
4. The schema is a writer's guide that never gets a conforming record dead-lettered: a mutation of a valid
   record that still validates is accepted by walduck's decoder, except for the few cross-field invariants
   JSON Schema cannot say, listed in ``_DECODER_ONLY`` (and in docs/api.md).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.compaction import Compactor
from support.catalog_model import OPERATIONS, CatalogModel
from walduck.contract import SCHEMA_FILES, record_schema
from walduck.deltas import Delta
from walduck.jsonexact import dumps_exact, loads_exact
from walduck.records import ChangeRecord, MalformedRecord
from walduck.sizepolicy import fit_record

CHANGE = Draft202012Validator(record_schema("change-record"))
DELTA = Draft202012Validator(record_schema("delta"))

ops_strategy = st.lists(st.sampled_from(OPERATIONS), min_size=1, max_size=40)

# decoder rules a JSON Schema cannot state; a mutation hitting one of them may validate and still be refused
_DECODER_ONLY = {
    "tx_index < tx_size": "tx_index/tx_size/tx_total inconsistent",
    "a stub (omitted = ['*']) is dead-lettered by design": "oversize record",
    "old_same_as_new names columns of new": "old_same_as_new without",
    "a delete carries old or key": "delete record without old row or key",
}


def _errors(validator: Draft202012Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _history(seed: int, ops: list[str]) -> CatalogModel:
    model = CatalogModel(seed=seed)
    model.run(["create_dataset"] * (1 + seed % 3) + ops)
    return model


def test_schemas_are_valid_and_packaged() -> None:
    for name in SCHEMA_FILES:
        Draft202012Validator.check_schema(record_schema(name))
    with pytest.raises(KeyError, match="known: change-record, delta"):
        record_schema("nope")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), ops=ops_strategy)
def test_every_change_record_and_delta_the_code_writes_validates(seed: int, ops: list[str]) -> None:
    model = _history(seed, ops)
    compactor = Compactor(0)
    deltas: list[Delta] = []
    for offset, rec in enumerate(model.records):
        raw = rec.to_bytes()
        assert _errors(CHANGE, loads_exact(raw)) == [], rec
        compactor.feed(rec, offset)
        if offset % 7 == 6:
            deltas += compactor.flush()
    deltas += compactor.flush()
    assert deltas, "a history of at least one dataset seals deltas"
    for delta in deltas:
        assert _errors(DELTA, loads_exact(delta.to_bytes())) == [], delta


def _big_record(rng: random.Random) -> ChangeRecord:
    model = _history(rng.randrange(2**32), ["append", "metadata", "schema_change"])
    updates = [r for r in model.records if r.old is not None and r.new is not None]
    rec = rng.choice(updates or model.records)
    big = "x" * 5000
    new = dict(rec.new or {}, column_statistics=big)  # an unread column, the same in old and new
    old = dict(rec.old or rec.new or {}, column_statistics=big)
    return ChangeRecord(**{**{f: getattr(rec, f) for f in rec.__slots__}, "new": new, "old": old})


@pytest.mark.parametrize("limit", [2_000_000, 11_000, 6_000, 600])
def test_every_size_policy_shape_validates(limit: int) -> None:
    rng = random.Random(limit)
    strategies = set()
    for _ in range(20):
        raw, strategy = fit_record(_big_record(rng), limit)
        strategies.add(strategy)
        assert _errors(CHANGE, loads_exact(raw)) == [], (strategy, raw[:300])
    assert strategies  # at least one shape per limit; together the limits reach all of them
    if limit == 600:
        assert "stub" in strategies


def _valid_docs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    model = _history(7, ["append", "new_version", "retention", "metadata", "storage_target", "heartbeat"] * 3)
    compactor = Compactor(0)
    deltas: list[Delta] = []
    for offset, rec in enumerate(model.records):
        compactor.feed(rec, offset)
    deltas += compactor.flush()
    return [loads_exact(r.to_bytes()) for r in model.records], [loads_exact(d.to_bytes()) for d in deltas]


RECORDS, DELTAS = _valid_docs()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(index=st.integers(0, 10_000), extra=st.dictionaries(st.text(min_size=1, max_size=12), json_values))
def test_readers_ignore_unknown_properties(index: int, extra: dict[str, Any]) -> None:
    rec = RECORDS[index % len(RECORDS)]
    delta = DELTAS[index % len(DELTAS)]
    for doc, decode in ((rec, ChangeRecord.from_bytes), (delta, Delta.from_bytes)):
        unknown = {k: v for k, v in extra.items() if k not in doc}
        assert decode(dumps_exact({**doc, **unknown})) == decode(dumps_exact(doc))


def _decoder_only(reason: str) -> bool:
    return any(fragment in reason for fragment in _DECODER_ONLY.values())


@settings(max_examples=400, deadline=None)
@given(
    index=st.integers(0, 10_000),
    data=st.data(),
    which=st.sampled_from(["record", "delta"]),
)
def test_a_record_the_schema_accepts_is_never_dead_lettered(
    index: int, data: st.DataObject, which: str
) -> None:
    docs, validator, decode = (
        (RECORDS, CHANGE, ChangeRecord.from_bytes) if which == "record" else (DELTAS, DELTA, Delta.from_bytes)
    )
    doc = dict(docs[index % len(docs)])
    key = data.draw(st.sampled_from(sorted(doc)))
    if data.draw(st.booleans()):
        del doc[key]
    else:
        doc[key] = data.draw(json_values)
    if not validator.is_valid(doc):
        return
    try:
        decode(dumps_exact(doc))
    except MalformedRecord as exc:
        assert _decoder_only(exc.reason), (
            f"schema-valid {which} refused: {exc.reason} ({key}={doc.get(key)!r})"
        )


def _without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


def test_the_schemas_refuse_what_the_decoders_refuse_for_shape() -> None:
    rec = next(r for r in RECORDS if r["kind"] == "change" and r["op"] == "insert")
    delta = next(d for d in DELTAS if any(s.get("upserts") for s in (d.get("shards") or {}).values()))
    shard = next(name for name, s in delta["shards"].items() if s.get("upserts"))
    upsert = delta["shards"][shard]["upserts"][0]
    bad_records = [
        {**rec, "v": 2},
        _without(rec, "lsn"),
        {**rec, "lsn": -1},
        {**rec, "kind": "gossip"},
        {**rec, "op": "merge"},
        {**rec, "new": None},
        _without(rec, "table"),
        {**rec, "tx_size": 0},
    ]
    bad_deltas = [
        {**delta, "v": 2},
        _without(delta, "src_offset_to"),
        {**delta, "lsn_to": -5},
        {**delta, "shards": {shard: {"upserts": [_without(upsert, "file_path")]}}},
        {**delta, "shards": {shard: {"deletes": [1, 2]}}},
    ]
    for doc in bad_records:
        with pytest.raises(MalformedRecord):
            ChangeRecord.from_bytes(dumps_exact(doc))
        assert not CHANGE.is_valid(doc), doc
    for doc in bad_deltas:
        assert not DELTA.is_valid(doc), doc
    with pytest.raises(MalformedRecord):
        Delta.from_bytes(dumps_exact(bad_deltas[0]))
