"""Errors of the connector package (decoding, protocol, delivery)."""

from __future__ import annotations

from walduck.errors import Unprocessable


class DecodeError(Unprocessable, ValueError):
    """A message or value the decoder cannot turn into a record; ``reason`` is short and bounded."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
