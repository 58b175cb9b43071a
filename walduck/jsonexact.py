"""Exact JSON: every number a PostgreSQL ``json``/``jsonb`` value can hold survives a load and a dump.

``orjson`` (walduck's JSON library) parses numbers into float64 / 64-bit integers: ``1e400`` is refused
("number is infinity when parsed as double"), ``123456789012345678901234567890`` becomes
``1.2345678901234568e+29`` and ``0.10000000000000000000001`` becomes ``0.1``. jsonb holds arbitrary
precision numerics, so every consumer that must round-trip a row uses :func:`loads_exact` /
:func:`dumps_exact` instead.

Representation (documented in ``docs/design.md``): a JSON number whose text float64 or int64/uint64 might not
hold exactly — a token of 16 characters or more, or with an exponent of 3+ digits — is loaded as a
:class:`decimal.Decimal` carrying the exact decimal value (integers too:
``Decimal('123456789012345678901234567890')``); every other number is the usual ``int``/``float``. The rule
depends on the token only, so a value has the same representation in whatever document it is loaded.
:func:`dumps_exact` writes a ``Decimal`` back as its exact decimal text (``str(Decimal)``, e.g. ``1E+400``).

Speed: a document whose number tokens are all short (≤ 15 characters, exponent < 100) goes through orjson
unchanged: ≤ 15 significant digits always round-trip through float64 and such integers fit in int64. Only
documents holding a longer or larger token (checked over the bytes at C speed, ``_risky``; a match inside a
string only costs the slow path) are parsed by the standard library with ``parse_float``/``parse_int`` hooks.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields, is_dataclass
from decimal import Decimal
from typing import Any

import orjson

# Pre-check in C speed (bytes.translate + substring search, ~1 us per KB; a regex costs ~50): a number token
# that may not be exact in orjson has >= 16 characters of [0-9.eE+-] in a row, or an exponent of 3+ digits.
# Matches inside strings only cost the slow path.
_RUN = bytes.maketrans(b"0123456789.eE+-", b"1" * 15)
_RUN_TABLE = bytes(b if chr(b) in "0123456789.eE+-" else 32 for b in range(256)).translate(_RUN)
_EXP_TABLE = bytes(
    49 if chr(b).isdigit() else 101 if chr(b) in "eE" else 43 if chr(b) in "+-" else 32 for b in range(256)
)
_LONG = b"1" * 16


def _risky(data: bytes) -> bool:
    if _LONG in data.translate(_RUN_TABLE):
        return True
    exp = data.translate(_EXP_TABLE)
    return b"e111" in exp or b"e+111" in exp


_EXPONENT3 = re.compile(r"[eE][+-]?[0-9]{3}")
_INT64 = (-(2**63), 2**64 - 1)


def _int(text: str) -> int | Decimal:
    value = int(text)
    return value if _INT64[0] <= value <= _INT64[1] else Decimal(text)


def _float(text: str) -> float | Decimal:
    # the same rule as the pre-check, so a number has one representation whichever path loaded its document
    if len(text) < 16 and _EXPONENT3.search(text) is None:
        return float(text)
    return Decimal(text)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_exact(raw: bytes | str) -> Any:
    """JSON text -> Python value with exact numbers (see the module docstring); raises ``ValueError``
    (``orjson.JSONDecodeError`` or ``json.JSONDecodeError``, both subclasses) on invalid JSON."""
    data = raw.encode() if isinstance(raw, str) else raw
    if not _risky(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # e.g. a short token out of float64's range: the standard library decides
    return json.loads(data, parse_float=_float, parse_int=_int, parse_constant=_constant)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"{value} is not a JSON number")
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _wide_ints(value: Any) -> Any:
    # orjson refuses integers past 64 bits (and calls no default for them): make them Decimals
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else Decimal(value)
    if isinstance(value, dict):
        return {k: _wide_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wide_ints(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _wide_ints(getattr(value, f.name)) for f in fields(value)}
    return value


def dumps_exact(value: Any, option: int | None = None) -> bytes:
    """``orjson.dumps`` that writes :class:`~decimal.Decimal` numbers (and integers past 64 bits) as their
    exact text."""
    opts = {} if option is None else {"option": option}
    try:
        return orjson.dumps(value, default=_default, **opts)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        return orjson.dumps(_wide_ints(value), default=_default, **opts)
