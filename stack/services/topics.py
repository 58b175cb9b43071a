"""The walduck Kafka topics (changes, deltas, dlq, the compactor's state), created idempotently with aiokafka's admin client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stack.services.errors import ServiceError
from walduck.config import WalduckSettings
from walduck.kafka_security import client_kwargs, security_kwargs, start_client

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
UNKNOWN_TOPIC_OR_PARTITION = 3


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str]


def topic_specs(settings: WalduckSettings) -> list[TopicSpec]:
    """Changes and deltas kept for ``{changes,deltas}_retention_{ms,bytes}`` (default 7 days; -1: forever); the DLQ
    for ``dlq_retention_ms``; the compactor's state topic compacted (``cleanup.policy=compact``: one snapshot
    per partition survives the cleaner, ``pipeline/snapshot.py``); ``min.insync.replicas`` when set."""
    parts = settings.topic_partitions
    durability = (
        {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
        if settings.topic_min_insync_replicas
        else {}
    )
    big = {"max.message.bytes": str(settings.max_message_bytes), **durability}

    def kept(ms: int, size: int) -> dict[str, str]:
        return {"retention.ms": str(ms), "retention.bytes": str(size), **big}

    return [
        TopicSpec(
            settings.changes_topic,
            parts,
            kept(settings.changes_retention_ms, settings.changes_retention_bytes),
        ),
        TopicSpec(
            settings.deltas_topic, parts, kept(settings.deltas_retention_ms, settings.deltas_retention_bytes)
        ),
        TopicSpec(settings.dlq_topic, parts, {"retention.ms": str(settings.dlq_retention_ms), **durability}),
        TopicSpec(
            settings.state_topic(), parts, {"cleanup.policy": "compact", "segment.ms": "3600000", **big}
        ),
    ]


async def ensure_topics(bootstrap: str, settings: WalduckSettings, wait_s: float = 30.0) -> list[str]:
    """Create whichever of the changes/deltas/dlq/compactor-state topics is missing; the names created (idempotent).

    Returns once every partition of the topics has a leader, so producers can use them at once.
    A topic that already exists is left as it is (a partition count differing from the settings is logged).
    """
    specs = topic_specs(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(wait_s * 1000), **security_kwargs(settings)
    )
    await start_client(admin, settings)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, settings.topic_replication_factor, topic_configs=s.configs)
                    for s in missing
                ],
                timeout_ms=int(wait_s * 1000),
            )
            for topic, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(topic)
                elif code != TOPIC_ALREADY_EXISTS:
                    message = rest[0] if rest else ""
                    raise ServiceError(f"creating Kafka topic {topic} failed: error {code} {message}")
        await _wait_leaders(admin, specs, wait_s)
        return created
    finally:
        await admin.close()


async def _wait_leaders(admin: AIOKafkaAdminClient, specs: list[TopicSpec], wait_s: float) -> None:
    names = [s.name for s in specs]
    wanted = {s.name: s.partitions for s in specs}
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        described = await admin.describe_topics(names)
        ready = {
            t["topic"]: len(t["partitions"])
            for t in described
            if t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
        }
        if set(ready) == set(names):
            for name, count in ready.items():
                if count != wanted[name]:
                    log.warning("topic %s has %d partitions, settings say %d", name, count, wanted[name])
            return
        if asyncio.get_running_loop().time() > deadline:
            raise ServiceError(
                f"Kafka topics without leaders after {wait_s:.0f}s: {sorted(set(names) - set(ready))}"
            )
        await asyncio.sleep(0.1)


async def delete_topics(settings: WalduckSettings, names: list[str], wait_s: float = 30.0) -> None:
    """Delete the given topics of ``settings.kafka_bootstrap``; ones that do not exist are ignored."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=int(wait_s * 1000))
    await start_client(admin, settings)
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            with contextlib.suppress(Exception):
                await admin.delete_topics(doomed, timeout_ms=int(wait_s * 1000))
    finally:
        await admin.close()


async def topic_partitions(settings: WalduckSettings, names: list[str]) -> dict[str, int]:
    """Partition count of each existing topic among ``names`` (on ``settings.kafka_bootstrap``)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await start_client(admin, settings)
    try:
        described = await admin.describe_topics(names)
        return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
    finally:
        await admin.close()
