"""Issue 16, finding 5: no exception from a value's shape reaches a stage's loop.

Every jsonb column gets arbitrary JSON (objects, arrays, strings, numbers float64 cannot hold, null), every text
column arbitrary text, every timestamp any PostgreSQL instant (walduck's encoding, ``infinity``, years > 9999, BC).
The records take the real path: ``to_bytes`` (connector) -> ``ChangeRecord.from_bytes`` -> compaction ->
``Delta`` bytes -> :meth:`ContextStore.apply` (DuckDB). The compactor once raised ``AttributeError: 'list' object
has no attribute 'get'`` for a partition ``metadata`` that was a JSON array.
"""

from __future__ import annotations

import itertools
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.compaction import Compactor, partition_entry
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.store import ContextStore
from sinks.settings import SinkSettings
from walduck.config import WalduckSettings
from walduck.deltas import Delta
from walduck.jsonexact import dumps_exact, loads_exact
from walduck.records import ChangeRecord, Kind, Op, Source

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)
_numbers = (
    st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.sampled_from([Decimal("1e400"), Decimal("-1e-400"), Decimal("0.10000000000000000000001")])
)
_json = st.recursive(
    st.none() | st.booleans() | _numbers | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
# the keys a consumer looks for, with values of any shape
_json_doc = _json | st.fixed_dictionaries(
    {}, optional={"schemaVersionId": _json, "tableName": _json, "iam": _json, "fields": _json}
)
_instant = st.sampled_from(
    [
        "2024-01-01T00:00:00+00:00",
        "2024-01-01T00:00:00.500000+00:00",
        "infinity",
        "-infinity",
        "+10000-01-01T00:00:00+00:00",
        "+294276-12-31T23:59:59.999999+00:00",
        "0000-12-31T23:30:00+00:00",
        "-4712-01-01T00:00:00+00:00",
    ]
)


def _fragment(value: Any) -> orjson.Fragment:
    return orjson.Fragment(dumps_exact(value))  # PostgreSQL's JSON text, as the connector carries it


_ids = itertools.count()
_STORE: dict[str, ContextStore] = {}


def _store() -> ContextStore:
    if "s" not in _STORE:
        tmp = Path(tempfile.mkdtemp(prefix="walduck-shapes-"))
        wd = WalduckSettings(data_dir=tmp / "data", storage_root=tmp / "storage", topic_partitions=1)
        store = ContextStore(SinkSettings(context_path=tmp / "ctx.duckdb", view_refresh_interval_s=0.0), wd)
        store.open()
        _STORE["s"] = store
    return _STORE["s"]


@st.composite
def histories(draw: st.DrawFn) -> list[ChangeRecord]:
    n = next(_ids)
    ds, dm, sv, st_id = f"ds-{n}", f"dm-{n}", f"sv-{n}", f"st-{n}"
    lsn = itertools.count(1000 * (n + 1), 10)
    out: list[ChangeRecord] = []

    def tx(*changes: tuple[str, Op, dict[str, Any] | None, dict[str, Any] | None]) -> None:
        commit = next(lsn) + 5
        for i, (table, op, new, old) in enumerate(changes):
            row = new or old or {}
            out.append(
                ChangeRecord(
                    Kind.CHANGE,
                    Source.STREAM,
                    next(lsn),
                    commit,
                    "2024-01-01T00:00:00+00:00",
                    table,
                    op,
                    {"id": row["id"]},
                    new,
                    old,
                    None if table == "storage_targets" else ds,
                    n,
                    i,
                    len(changes),
                    len(changes),
                )
            )

    target = {"id": st_id, "name": draw(_text), "kind": "local", "config": _fragment(draw(_json_doc))}
    dataset = {
        "id": ds,
        "slug": draw(_text),
        "name": draw(_text),
        "description": draw(st.none() | _text),
        "status": draw(st.sampled_from(["active", "inactive"])),
        "write_format": "parquet",
        "default_storage_target_id": st_id,
        "metadata": _fragment(draw(_json_doc)),
        "created_at": draw(_instant),
        "updated_at": draw(_instant),
    }
    version = {"id": sv, "dataset_id": ds, "version": 1, "schema": _fragment(draw(_json_doc))}
    manifest = {"id": dm, "dataset_id": ds, "status": "published", "manifest_shard": draw(st.none() | _text)}
    manifest["schema_version_id"] = sv
    parts = []
    for i in range(draw(st.integers(1, 3))):
        start = draw(_instant)
        parts.append(
            {
                "id": f"p-{n}-{i}",
                "dataset_id": ds,
                "manifest_id": dm,
                "manifest_shard": draw(st.none() | _text),
                "storage_target_id": st_id,
                "file_path": draw(_text.filter(bool)),
                "file_format": "parquet",
                "start_time": start,
                "end_time": draw(_instant),
                "row_count": draw(st.none() | st.integers(-(2**63), 2**63 - 1)),
                "file_size_bytes": draw(st.none() | st.integers(0, 2**63 - 1)),
                "partition_key": _fragment(draw(_json_doc)),
                "metadata": _fragment(draw(_json_doc)),
                "column_statistics": _fragment(draw(_json)),
            }
        )
    tx(("storage_targets", Op.INSERT, target, None))
    tx(
        ("datasets", Op.INSERT, dataset, None),
        ("dataset_schema_versions", Op.INSERT, version, None),
        ("dataset_manifests", Op.INSERT, manifest, None),
        *(("dataset_partitions", Op.INSERT, p, None) for p in parts),
    )
    changed = {**dataset, "name": draw(_text), "metadata": _fragment(draw(_json_doc))}
    moved = {**parts[0], "metadata": _fragment(draw(_json_doc)), "row_count": 7}
    tx(("datasets", Op.UPDATE, changed, dataset), ("dataset_partitions", Op.UPDATE, moved, parts[0]))
    if draw(st.booleans()):
        tx(("dataset_partitions", Op.DELETE, None, moved))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_any_value_shape_goes_through_compaction_and_apply(records: list[ChangeRecord]) -> None:
    compactor = Compactor(0)
    for offset, rec in enumerate(records):
        compactor.feed(ChangeRecord.from_bytes(rec.to_bytes()), offset)  # the wire, as the runner sees it
    deltas = compactor.flush()
    assert compactor.clean and not compactor.drain_rejected()
    store = _store()
    for delta in deltas:
        back = Delta.from_bytes(delta.to_bytes())
        # numbers may change type (float <-> Decimal) through the bytes, never value
        assert meaning(_plain(back.shards)) == meaning(_plain(delta.shards))
        assert meaning(_plain(back.dataset)) == meaning(_plain(delta.dataset))
        store.apply(back, 0, _next_offset())
    last = [r for r in records if r.table == "datasets"][-1].new
    assert last is not None
    with store.reader() as cur:
        row = cur.execute(f"SELECT name FROM {WD}.datasets WHERE id = ?", [last["id"]]).fetchone()
    assert row == (last["name"] or last["slug"] or last["id"],)


def _plain(value: Any) -> Any:
    return loads_exact(dumps_exact(value))


def meaning(value: Any) -> Any:
    """Numbers by exact value (float 0.5 == Decimal('0.5')), the rest as is."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if isinstance(value, list):
        return [meaning(v) for v in value]
    return {k: meaning(v) for k, v in value.items()}


_offsets = itertools.count()


def _next_offset() -> int:
    return next(_offsets)


def test_partition_entry_takes_metadata_of_any_shape() -> None:
    for meta in ([1, 2], "text", 5, None, {"schemaVersionId": {"a": 1}, "tableName": ["x"]}):
        entry = partition_entry({"id": "p", "metadata": meta, "start_time": "infinity"}, None)
        assert entry["table_name"] is None or isinstance(entry["table_name"], str)
        assert entry["schema_version_id"] is None or isinstance(entry["schema_version_id"], str)


def test_context_clamps_instants_outside_duckdb_range() -> None:
    """docs/contexts.md "Values": what /sql/read shows for ±infinity, years > 9999 and BC."""
    from datetime import datetime

    from walduck.deltas import DeltaKind, ShardChange

    store = _store()
    n = next(_ids)
    ds = f"ds-clamp-{n}"
    entry = {
        "id": f"p-clamp-{n}",
        "dataset_id": ds,
        "manifest_id": f"dm-{n}",
        "manifest_shard": "2024-01-01",
        "storage_target_id": None,
        "file_path": "x.parquet",
        "file_format": "parquet",
        "start_time": "-4712-01-01T00:00:00+00:00",
        "end_time": "infinity",
        "row_count": 1,
        "file_size_bytes": 1,
        "schema_version_id": None,
        "table_name": "records",
        "partition_key": {},
    }
    delta = Delta(
        DeltaKind.DELTA,
        0,
        0,
        0,
        1,
        1,
        "2024-01-01T00:00:00+00:00",
        dataset_id=ds,
        dataset={"id": ds, "slug": ds, "name": ds, "created_at": "+10000-01-01T00:00:00+00:00"},
        shards={"2024-01-01": ShardChange(upserts=[entry], published_manifest_id=f"dm-{n}")},
    )
    store.apply(Delta.from_bytes(delta.to_bytes()), 0, _next_offset())
    with store.reader() as cur:
        times = cur.execute(
            f"SELECT start_time, end_time FROM {WD}.partitions WHERE id = ?", [entry["id"]]
        ).fetchone()
        (created,) = cur.execute(f"SELECT created_at FROM {WD}.datasets WHERE id = ?", [ds]).fetchone()
    assert times == (datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999))
    assert created == datetime(9999, 12, 31, 23, 59, 59, 999999)
