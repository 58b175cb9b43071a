"""Errors of the Debezium source, under the project's root (:mod:`walduck.errors`)."""

from __future__ import annotations

from walduck.errors import Unprocessable, WalduckError


class DebeziumError(WalduckError):
    """The Debezium source cannot run as configured (a refusal with the setting to change)."""


class UnusableEvent(Unprocessable, ValueError):
    """One Debezium event walduck cannot translate; ``reason`` goes to the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
