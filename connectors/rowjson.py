"""Inserted rows straight to JSON: the connector's hot path, between pgoutput decoding and the record.

Layering: :mod:`connectors.pgoutput` decodes messages; this module turns one INSERT's TupleData into
the row's JSON document (what ``ChangeRecord.new`` carries, as an ``orjson.Fragment``) plus the few
values the connector routes by (key columns, dataset id); :mod:`connectors.transactions` builds records.

Two interchangeable encoders:

* :class:`PyRowEncoder` — pure Python: :meth:`connectors.pgoutput.RowPlan.decode` then ``orjson.dumps``.
* ``connectors._rowjson.RowEncoder`` — the same contract compiled with Cython (built by ``pip install``
  when a C compiler is present; ``setup.py``). It copies PostgreSQL's text into the JSON document
  wherever the text already is the JSON form and calls the Python conversion for everything else.

Both return ``None`` for a row the careful decoder must handle (it names the problem for the DLQ).
``tests/unit/connectors/test_rowjson.py`` checks that both return the same bytes for generated rows.
``WALDUCK_CONNECTOR_ROW_ENCODER`` picks one: ``auto`` (native when built, else Python with a warning), ``native``
(refuse to start without it), ``python``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from connectors import pgoutput as po
from connectors import values
from walduck.errors import WalduckError

log = logging.getLogger(__name__)

try:
    from connectors._rowjson import RowEncoder as NativeRowEncoder
except ImportError:  # no compiler when the package was installed: the Python encoder serves
    NativeRowEncoder = None


class RowEncoder(Protocol):
    def encode(self, buf: bytes, pos: int, /) -> tuple[bytes, tuple[Any, ...]] | None: ...


class EncoderUnavailable(WalduckError, RuntimeError):
    """``WALDUCK_CONNECTOR_ROW_ENCODER=native`` but the compiled encoder was not built with this installation."""


class PyRowEncoder:
    """The reference implementation: one-pass Python decode, then ``orjson.dumps``."""

    def __init__(self, plan: po.RowPlan, wanted: Sequence[str]) -> None:
        self.plan = plan
        self.wanted = tuple(wanted)

    def encode(self, buf: bytes, pos: int) -> tuple[bytes, tuple[Any, ...]] | None:
        row = self.plan.decode(buf, pos)
        if row is None:
            return None
        try:
            data = orjson.dumps(row)
        except orjson.JSONEncodeError:  # e.g. an integer past 64 bits
            return None
        return data, tuple(row.get(n) for n in self.wanted)


def _as_json(conv: Callable[[bytes], Any]) -> Callable[[bytes], bytes]:
    return lambda raw: orjson.dumps(conv(raw))


def native_encoder(plan: po.RowPlan, wanted: Sequence[str]) -> RowEncoder:
    """The compiled encoder for ``plan`` (raises :class:`EncoderUnavailable` when not built)."""
    if NativeRowEncoder is None:
        raise EncoderUnavailable(
            "connectors._rowjson is not built (reinstall with a C compiler: pip install -e .)"
        )
    cols = plan.relation.columns
    names = [c.name for c in cols]
    prefixes = [(b"{" if i == 0 else b",") + orjson.dumps(name) + b":" for i, name in enumerate(names)]
    index = {name: i for i, name in enumerate(names)}
    return NativeRowEncoder(
        [int(values.json_kind(c.type_oid)) for c in cols],
        prefixes,
        [_as_json(conv) for conv in plan.converters],
        [(index.get(n, -1), plan.converters[index[n]] if n in index else None) for n in wanted],
    )


def make_encoder(plan: po.RowPlan, wanted: Sequence[str], which: str = "auto") -> RowEncoder:
    """An encoder for one relation: ``which`` is ``auto``, ``native`` or ``python``."""
    if active(which) == "native":
        return native_encoder(plan, wanted)
    return PyRowEncoder(plan, wanted)


def active(which: str = "auto") -> str:
    """The encoder ``which`` resolves to on this installation (``native`` or ``python``)."""
    if which not in ("auto", "native", "python"):
        raise ValueError(f"unknown row encoder {which!r} (auto, native, python)")
    if which == "python":
        return "python"
    if which == "native" and NativeRowEncoder is None:
        raise EncoderUnavailable("WALDUCK_CONNECTOR_ROW_ENCODER=native but connectors._rowjson is not built")
    return "native" if NativeRowEncoder is not None else "python"
