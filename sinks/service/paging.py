"""Cursors to page past the row cap (issue 17): ``/sql/read`` answers that were cut carry one; the same
statement with it returns the rows after those already sent.

A cursor is ``base64url({"o": offset, "f": fingerprint})``: the offset of the next row and a fingerprint of the
statement and its parameters (a cursor of another statement is refused). It holds no rights: IAM and planning
run again on every page. Each page re-executes the statement and skips ``offset`` rows, so pages are
consecutive slices of one order only when the statement has an ``ORDER BY`` on a unique key, and the live
context may have applied newer catalog changes between pages (pass ``min_lsn`` = the first page's
``appliedLsn`` to read no older state).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from sinks.service.errors import ApiError

MAX_CURSOR_CHARS = 128  # what the JSON envelope reserves for nextCursor inside the byte cap


def statement_fingerprint(sql: str, params: Sequence[Any] | None) -> str:
    return hashlib.sha256(orjson.dumps([sql, list(params or [])], default=str)).hexdigest()[:16]


def encode(offset: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"o": offset, "f": fingerprint})).decode().rstrip("=")


def decode(cursor: str, fingerprint: str) -> int:
    """The offset a cursor points at; 400 for a malformed cursor or one of another statement."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset, of = raw["o"], raw["f"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ApiError(400, "cursor: not a cursor this service issued") from exc
    if not isinstance(offset, int) or offset < 0 or of != fingerprint:
        raise ApiError(400, "cursor: issued for another statement or parameters")
    return offset
