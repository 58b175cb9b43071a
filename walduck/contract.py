"""The published contract of walduck's Kafka records: JSON Schemas (draft 2020-12) of change records and deltas.

The schemas live next to this module (``walduck/schemas/*.json``, shipped in the wheel) so a reader outside
this repository can validate what walduck writes; ``tests/unit/core/test_contract.py`` checks that everything
the code writes validates, that the decoders ignore unknown properties (the compatibility policy) and that
the schemas are never stricter than walduck's own decoders. The policy itself: docs/api.md, "Record contract".

This module only loads the documents; it validates nothing at run time (the decoders in
:mod:`walduck.records` and :mod:`walduck.deltas` are the run-time check, with named DLQ reasons).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from walduck.deltas import DELTA_SCHEMA_VERSION
from walduck.records import SCHEMA_VERSION

SCHEMA_FILES = {
    "change-record": f"change_record.v{SCHEMA_VERSION}.json",
    "delta": f"delta.v{DELTA_SCHEMA_VERSION}.json",
}
"""Contract name -> its schema file in ``walduck/schemas/`` (the current version of each record)."""


@cache
def _load(filename: str) -> str:
    return (resources.files("walduck") / "schemas" / filename).read_text(encoding="utf-8")


def record_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of ``name`` (``change-record`` or ``delta``), a fresh copy."""
    try:
        filename = SCHEMA_FILES[name]
    except KeyError:
        raise KeyError(
            f"unknown record contract {name!r}; known: {', '.join(sorted(SCHEMA_FILES))}"
        ) from None
    return json.loads(_load(filename))
