"""CLI commands of this component (wired into ``stack.cli`` as ``walduck compactor …``)."""

from __future__ import annotations

import asyncio
import logging

import typer

from walduck.gctuning import tune_for_streaming

app = typer.Typer(no_args_is_help=True)


@app.callback()
def main() -> None:
    """Stream processor: change records -> compacted per-shard deltas."""


@app.command()
def run(
    kafka: str = typer.Option(None, "--kafka", help="Kafka bootstrap [WALDUCK_KAFKA_BOOTSTRAP]."),
    group_id: str = typer.Option(None, help="Consumer group [WALDUCK_COMPACTOR_GROUP_ID]."),
    metrics_port: int = typer.Option(None, help="Prometheus port, 0 = off [WALDUCK_COMPACTOR_METRICS_PORT]."),
    changes_topic: str = typer.Option(None, help="[WALDUCK_CHANGES_TOPIC]"),
    deltas_topic: str = typer.Option(None, help="[WALDUCK_DELTAS_TOPIC]"),
    dlq_topic: str = typer.Option(None, help="[WALDUCK_DLQ_TOPIC]"),
) -> None:
    """Consume change records, publish compacted per-shard deltas (runs until SIGTERM)."""
    from pipeline.runner import run_compactor
    from pipeline.settings import CompactorSettings
    from walduck.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings(
        kafka_bootstrap=kafka, changes_topic=changes_topic, deltas_topic=deltas_topic, dlq_topic=dlq_topic
    )
    overrides = {
        k: v for k, v in {"group_id": group_id, "metrics_port": metrics_port}.items() if v is not None
    }
    knobs = CompactorSettings(**overrides)
    if not settings.kafka_bootstrap:
        raise typer.BadParameter("no Kafka bootstrap: pass --kafka or set WALDUCK_KAFKA_BOOTSTRAP")
    # the state (visible partitions per shard) is large and long-lived: keep start-up objects out of full
    # collections and collect less often (full collections over millions of dicts stalled the loop)
    tune_for_streaming()
    asyncio.run(run_compactor(settings, knobs))
