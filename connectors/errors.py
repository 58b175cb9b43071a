"""Errors of the connector package (decoding, protocol, delivery)."""

from __future__ import annotations

import re

from walduck.errors import Unprocessable, WalduckError


class DecodeError(Unprocessable, ValueError):
    """A message or value the decoder cannot turn into a record; ``reason`` is short and bounded."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PermanentError(WalduckError):
    """An error retrying cannot fix (an unknown role or database, a missing publication, a role without the
    REPLICATION attribute, ``wal_level`` not ``logical``): the connector exits with code 2 and this one line,
    so the pod restarts visibly (CrashLoopBackOff) instead of looking Running while it retries forever."""


# what PostgreSQL says when only an operator can fix it (matched on the server's message: connection errors
# carry no SQLSTATE in psycopg, and the replication stream's ErrorResponse arrives as text)
_PERMANENT = (
    re.compile(r'role "[^"]*" does not exist'),
    re.compile(r'database "[^"]*" does not exist'),
    re.compile(r'publication "[^"]*" does not exist'),
    re.compile(r"password authentication failed for user \"[^\"]*\""),
    re.compile(r"no pg_hba\.conf entry[^\n]*"),
    re.compile(r"must be superuser or (?:have the )?replication (?:role|attribute)[^\n]*"),
    re.compile(r"permission denied to start WAL sender[^\n]*"),
    re.compile(r"logical decoding requires \"?wal_level\"? >= \"?logical\"?"),
    re.compile(r"permission denied for (?:table|schema|database) [^\n]*"),
)


def permanent_reason(exc: BaseException) -> str | None:
    """The operator-facing reason when ``exc`` is a permanent error, else ``None`` (retry it)."""
    text = str(exc)
    for pattern in _PERMANENT:
        found = pattern.search(text)
        if found:
            return found.group(0)
    return None
