"""One size policy for change records, from the connector's producer to the topic to every consumer.

One setting, ``WALDUCK_MAX_MESSAGE_BYTES`` (:attr:`walduck.config.WalduckSettings.max_message_bytes`,
16 MiB), is the producer's ``max_request_size``, the topics' ``max.message.bytes``, and the largest record
the compactor (change records) and the contexts (deltas) accept.

A change record that would exceed it is made to fit without losing what a consumer needs, in this order
(:func:`fit_record`; metric ``walduck_connector_oversize_records_total{strategy}``):

1. ``old_same_as_new``: an UPDATE carries a column whose old value equals the new one (typically an
   unchanged TOASTed value, which REPLICA IDENTITY FULL sends in both) once, in ``new``; the record lists those
   columns in ``old_same_as_new`` and :meth:`walduck.records.ChangeRecord.from_bytes` restores ``old`` from
   ``new``: consumers see the complete record.
2. ``omitted_columns``: columns no consumer reads (:data:`walduck.catalog_tables.CONSUMED_COLUMNS`, e.g.
   ``column_statistics``, ``column_bloom_filters``) are left out of ``new`` and ``old``, largest first, and
   listed in ``omitted``.
3. ``projected_json``: a JSON column some consumer reads only a few keys of
   (:data:`walduck.catalog_tables.CONSUMED_JSON_KEYS`, e.g. a partition's ``metadata``, of which the compactor
   reads ``schemaVersionId`` and ``tableName``) keeps only those keys, in ``new`` and ``old``, largest column
   first; ``omitted`` lists it as ``<column>.*`` (its other keys were left out). A partition whose metadata
   carries megabytes of statistics then still reaches every context exactly.
4. ``stub``: still too large (a value a consumer reads is itself over the limit): the record keeps its key,
   table, op, dataset and transaction position with ``omitted = ["*"]`` and no row. Its transaction share stays
   whole (the compactor dead-letters the stub and seals the rest) and its dataset's delta carries ``resync``:
   every context rebuilds that dataset from PostgreSQL, so the change still reaches it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from walduck.catalog_tables import CONSUMED_COLUMNS, CONSUMED_JSON_KEYS
from walduck.jsonexact import dumps_exact, loads_exact
from walduck.records import OMITTED_ALL, ChangeRecord, Op


def _size(value: Any) -> int:
    return len(orjson.dumps(value))


def fit_record(record: ChangeRecord, limit: int) -> tuple[bytes, str | None]:
    """The record's Kafka value within ``limit`` bytes, and the strategy it took (``None``: it fit as is)."""
    value = record.to_bytes()
    if len(value) <= limit:
        return value, None
    if isinstance(record.new, orjson.Fragment):  # the connector's pre-encoded INSERT row: as a dict from here
        record = replace(record, new=loads_exact(orjson.dumps(record.new)))
    old, new = record.old, record.new
    if record.op is Op.UPDATE and isinstance(old, dict) and isinstance(new, dict):
        same = sorted(
            c for c, v in old.items() if c in new and (new[c] is v or orjson.dumps(new[c]) == orjson.dumps(v))
        )
        if same:
            record = replace(
                record, old={c: v for c, v in old.items() if c not in same}, old_same_as_new=same
            )
            value = record.to_bytes()
            if len(value) <= limit:
                return value, "old_same_as_new"
    consumed = CONSUMED_COLUMNS.get(record.table or "")
    if consumed is not None and isinstance(record.new, dict | None) and isinstance(record.old, dict | None):
        sizes: dict[str, int] = {}
        for row in (record.new, record.old):
            for c, v in (row or {}).items():
                if c not in consumed:
                    sizes[c] = sizes.get(c, 0) + _size(v)
        omitted: list[str] = []
        excess = len(value) - limit
        for c in sorted(sizes, key=lambda c: (-sizes[c], c)):
            if excess <= 0:
                break
            omitted.append(c)
            excess -= sizes[c]
        if omitted:
            drop = set(omitted)
            record = replace(
                record,
                new=None if record.new is None else {c: v for c, v in record.new.items() if c not in drop},
                old=None if record.old is None else {c: v for c, v in record.old.items() if c not in drop},
                omitted=sorted(drop),
                old_same_as_new=[c for c in record.old_same_as_new or [] if c not in drop] or None,
            )
            value = record.to_bytes()
            if len(value) <= limit:
                return value, "omitted_columns"
    projected = _project_json(record, len(value) - limit)
    if projected is not None:
        record = projected
        value = record.to_bytes()
        if len(value) <= limit:
            return value, "projected_json"
    stub = replace(record, new=None, old=None, old_same_as_new=None, omitted=[OMITTED_ALL])
    return stub.to_bytes(), "stub"


def _project_json(record: ChangeRecord, excess: int) -> ChangeRecord | None:
    """Strategy 3: JSON columns cut to the keys consumers read, largest first, until ``excess`` bytes went."""
    keys_of = CONSUMED_JSON_KEYS.get(record.table or "")
    if not keys_of or not isinstance(record.new, dict | None) or not isinstance(record.old, dict | None):
        return None
    rows = [dict(r) if r is not None else None for r in (record.new, record.old)]
    sizes = {
        c: sum(_size(r[c]) for r in rows if r is not None and r.get(c) is not None)
        for c in keys_of
        if any(r is not None and r.get(c) is not None for r in rows)
    }
    done: list[str] = []
    for column in sorted(sizes, key=lambda c: (-sizes[c], c)):
        if excess <= 0:
            break
        saved = 0
        for row in rows:
            if row is None or row.get(column) is None:
                continue
            before = _size(row[column])
            row[column] = _keep_keys(row[column], keys_of[column])
            saved += before - _size(row[column])
        done.append(f"{column}.*")
        excess -= saved
    if not done:
        return None
    return replace(
        record,
        new=rows[0],
        old=rows[1],
        omitted=sorted({*(record.omitted or []), *done}),
        old_same_as_new=[c for c in record.old_same_as_new or [] if f"{c}.*" not in done] or None,
    )


def _keep_keys(value: Any, keys: frozenset[str]) -> Any:
    """A JSON object (dict or the connector's verbatim ``orjson.Fragment``) with only ``keys``; others as is."""
    verbatim = isinstance(value, orjson.Fragment)
    doc = loads_exact(orjson.dumps(value)) if verbatim else value
    if not isinstance(doc, dict):
        return value
    kept = {k: v for k, v in doc.items() if k in keys}
    return orjson.Fragment(dumps_exact(kept)) if verbatim else kept
