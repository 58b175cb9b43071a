"""Kafka for the compactor integration tests: WALDUCK_TEST_KAFKA, else a LocalKafka of our own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.services.kafka import LocalKafka
from stack.services.topics import ensure_topics
from walduck.config import WalduckSettings


@pytest.fixture(scope="session")
def pipeline_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("WALDUCK_TEST_KAFKA")
    if existing:
        yield existing
        return
    kafka = LocalKafka(Path(tmp_path_factory.mktemp("pipeline-kafka")))
    bootstrap = kafka.start()
    try:
        yield bootstrap
    finally:
        kafka.stop()


@pytest.fixture
async def pipeline_topics(pipeline_kafka: str) -> WalduckSettings:
    suffix = uuid.uuid4().hex[:8]
    settings = WalduckSettings(
        kafka_bootstrap=pipeline_kafka,
        changes_topic=f"t.changes.{suffix}",
        deltas_topic=f"t.deltas.{suffix}",
        dlq_topic=f"t.dlq.{suffix}",
        topic_partitions=4,
    )
    await ensure_topics(pipeline_kafka, settings)
    return settings
