"""Readers of the transactional topics: the one way a walduck consumer of the deltas (or state) topic is built.

The compactor writes deltas and state snapshots in Kafka transactions, so every reader of those topics must
use ``isolation_level="read_committed"``: an aborted window (a fenced owner, a killed compactor) is then never
seen, and end offsets are the last stable offset. Such readers assign partitions and seek themselves, and
the context file or the snapshot head — never Kafka — holds where they resume, so they join no group and
commit nothing. Records may be as large as ``WALDUCK_MAX_MESSAGE_BYTES``
(:mod:`walduck.sizepolicy`), and the security settings are those of every client
(:func:`walduck.kafka_security.client_kwargs`).

:func:`committed_reader_kwargs` holds these rules once; :func:`committed_reader` builds the consumer. The
query service's delta consumer, the compactor's restore reads and end-offset probe, the benches and the
tests' truth readers all take them (``tests/unit/core/test_kafka_readers.py`` checks that none is built
another way).
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

from walduck.config import WalduckSettings
from walduck.kafka_security import client_kwargs

READ_COMMITTED = "read_committed"


def committed_reader_kwargs(settings: WalduckSettings, **overrides: Any) -> dict[str, Any]:
    """The aiokafka consumer arguments of a reader of a transactional topic: ``client_kwargs(settings)``,
    no group, no auto-commit, ``read_committed``, fetches up to ``settings.max_message_bytes`` per partition;
    ``overrides`` add or replace arguments (``auto_offset_reset``, ``max_poll_records``, ``bootstrap_servers``
    …) but never the isolation level."""
    if "isolation_level" in overrides:
        raise TypeError("a reader of a transactional topic is always read_committed")
    return {
        **client_kwargs(settings),
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": READ_COMMITTED,
        "max_partition_fetch_bytes": settings.max_message_bytes,
        **overrides,
    }


def committed_reader(settings: WalduckSettings, **overrides: Any) -> AIOKafkaConsumer:
    """``AIOKafkaConsumer(**committed_reader_kwargs(settings, **overrides))`` (not started: use
    :func:`walduck.kafka_security.start_client`)."""
    return AIOKafkaConsumer(**committed_reader_kwargs(settings, **overrides))
