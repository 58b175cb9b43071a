"""CLI commands of this component (wired into ``stack.cli`` as ``walduck compactor …``)."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import typer

from walduck.config import LogFormat, LogLevel
from walduck.gctuning import tune_for_streaming
from walduck.logs import format_option, level_option

if TYPE_CHECKING:
    from pipeline.settings import CompactorSettings
    from walduck.config import WalduckSettings

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
    log_level: LogLevel = level_option(),
    log_format: LogFormat = format_option(),
) -> None:
    """Consume change records, publish compacted per-shard deltas (runs until SIGTERM)."""
    from pipeline.settings import CompactorSettings
    from walduck.config import load_settings
    from walduck.logs import setup_logging

    setup_logging("compactor", log_level, log_format)
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
    from aiokafka.errors import KafkaConnectionError

    try:
        asyncio.run(_run(settings, knobs))
    except KafkaConnectionError as exc:
        # one clear line and exit 2 (issue 17), as `walduck kafka ensure-topics`: nothing to consume from; the
        # orchestrator restarts the pod, which then resumes from the committed offsets
        typer.echo(f"walduck compactor: cannot reach Kafka at {settings.kafka_bootstrap}: {exc}", err=True)
        raise typer.Exit(2) from None


async def _run(settings: WalduckSettings, knobs: CompactorSettings) -> None:
    """The compactor process: the runner, its /metrics, /live, /ready (docs/operations.md "Probes"), signals."""
    from pipeline.runner import CompactorRunner
    from walduck.health import Health, kafka_connected
    from walduck.metrics import serve_metrics

    runner = CompactorRunner(settings, knobs)
    health = Health("compactor")
    consumer = lambda: runner.consumer  # noqa: E731  (created by runner.run)
    # ready: the consumer holds a broker connection and knows its group coordinator (joined the group)
    health.check("kafkaConnected", lambda: kafka_connected(getattr(consumer(), "_client", None)))
    health.check("groupCoordinator", lambda: consumer()._coordinator.coordinator_id is not None)
    if knobs.metrics_port:
        serve_metrics("compactor", knobs.metrics_port, settings.metrics_host, health)

    def stop() -> None:
        health.stopping = True
        runner.stopping.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    beating = asyncio.create_task(health.heartbeat(), name="health-heartbeat")
    try:
        await runner.run()
    finally:
        beating.cancel()
