"""The dead-letter envelope: one format for every component on the DLQ topic (``settings.dlq_topic``).

A dead letter is the refused input itself plus why and where from, so an operator can read it, fix the cause
and replay it:

=====================  ==============================================================================
Kafka record value     the refused input's raw bytes (a pgoutput message for the connector, a change record
                       for the compactor, a delta for a context), cut to :data:`MAX_VALUE_BYTES`
Kafka record key       the input's key when it had one (dataset id, table name)
header ``component``   ``connector`` | ``compactor`` | ``context``
header ``reason``      a short, bounded class (also the ``reason`` label of ``walduck_dlq_records_total``)
header ``detail``      free text, at most 1,000 characters
header ``source``      where the input was read: ``<topic>/<partition>@<offset>``, or ``wal@<X/Y>``
header ``at``          when it was refused, UTC ISO 8601
header ``truncated_from``  the original size in bytes, only when the value was cut
other headers          component context (the connector adds ``table``, ``xid``, ``commit_lsn``)
=====================  ==============================================================================

Not here: sending (each component's own producer sends and counts it) and deciding what is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from walduck.timeutil import iso, utcnow

# a whole oversized input would make the DLQ send fail (the producer's request size), and the stage could then
# never commit past it: keep its head and say how large it was
MAX_VALUE_BYTES = 256 * 1024
MAX_DETAIL_CHARS = 1000
COMPONENTS = ("connector", "compactor", "context")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    component: str
    reason: str
    source: str
    raw: bytes
    detail: str = ""
    key: bytes | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def envelope(self, at: str | None = None) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        """``(key, value, headers)`` of the Kafka record."""
        headers = [
            ("component", self.component.encode()),
            ("reason", self.reason.encode()),
            ("detail", self.detail[:MAX_DETAIL_CHARS].encode()),
            ("source", self.source.encode()),
            ("at", (at or iso(utcnow())).encode()),
        ]
        headers += [(name, value.encode()) for name, value in self.extra.items()]
        value = self.raw
        if len(value) > MAX_VALUE_BYTES:
            headers.append(("truncated_from", str(len(value)).encode()))
            value = value[:MAX_VALUE_BYTES]
        return self.key, value, headers


def read(value: bytes | None, headers: Iterable[tuple[str, bytes]], key: bytes | None = None) -> DeadLetter:
    """A DLQ record back as a :class:`DeadLetter` (``extra`` holds ``at``, ``truncated_from`` and the rest)."""
    found = {name: raw.decode(errors="replace") for name, raw in headers}
    core = {name: found.pop(name, "") for name in ("component", "reason", "detail", "source")}
    return DeadLetter(raw=value or b"", key=key, extra=found, **core)
