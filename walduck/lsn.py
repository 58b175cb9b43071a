"""PostgreSQL log sequence numbers: stored as integers, shown as ``X/Y``."""

from __future__ import annotations

import re

from walduck.errors import WalduckError

_LSN_RE = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")


class InvalidLSN(WalduckError, ValueError):
    """Raised when a string is not an ``X/Y`` LSN."""


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> integer LSN."""
    match = _LSN_RE.match(text)
    if match is None:
        raise InvalidLSN(f"not an LSN (expected X/Y in hex): {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    """Integer LSN -> ``'16/B374D848'`` (PostgreSQL's own spelling)."""
    if value < 0 or value >= 1 << 64:
        raise InvalidLSN(f"LSN out of range: {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
