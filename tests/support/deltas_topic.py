"""Hand-made deltas onto a real deltas topic (what the compactor would have produced), for the context tests."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from walduck.config import WalduckSettings
from walduck.deltas import Delta


async def produce_deltas(settings: WalduckSettings, deltas: Iterable[Delta], partition: int = 0) -> None:
    """Each of ``deltas``, in order, to ``partition`` of ``settings.deltas_topic`` (keyed as the compactor keys)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for d in deltas:
            await producer.send_and_wait(
                settings.deltas_topic, d.to_bytes(), key=d.kafka_key(), partition=partition
            )
    finally:
        await producer.stop()
