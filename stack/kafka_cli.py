"""``walduck kafka …``: Kafka-side setup usable as an init Job (topics with their replication and configs)."""

from __future__ import annotations

import asyncio
import sys

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("ensure-topics")
def ensure_topics_cmd() -> None:
    """Create the changes, deltas, DLQ and compactor-state topics that are missing (WALDUCK_TOPIC_PARTITIONS,
    WALDUCK_TOPIC_REPLICATION_FACTOR, WALDUCK_TOPIC_MIN_INSYNC_REPLICAS, WALDUCK_DLQ_RETENTION_MS,
    WALDUCK_{CHANGES,DELTAS}_RETENTION_{MS,BYTES}); existing topics are left as they are. Exit 0 when all four exist, 2 with one line when they cannot be made."""
    from aiokafka.errors import KafkaError

    from stack.services.errors import ServiceError
    from stack.services.topics import ensure_topics, topic_specs
    from walduck.config import load_settings

    settings = load_settings()
    if not settings.kafka_bootstrap:
        print("walduck kafka ensure-topics: error: WALDUCK_KAFKA_BOOTSTRAP is not set", file=sys.stderr)
        raise typer.Exit(2)
    try:
        created = asyncio.run(ensure_topics(settings.kafka_bootstrap, settings))
    except (KafkaError, ServiceError, OSError, TimeoutError) as exc:
        print(f"walduck kafka ensure-topics: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    for spec in topic_specs(settings):
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name}\t{state}\tpartitions={spec.partitions}\t{spec.configs}")
