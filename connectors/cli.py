"""CLI commands of this component (wired into ``stack.cli``): ``walduck connector run|setup``."""

from __future__ import annotations

import asyncio
import logging
import signal

import typer

from connectors.errors import PermanentError
from connectors.settings import ConnectorSettings, SnapshotMode
from walduck.config import LogFormat, LogLevel
from walduck.gctuning import tune_for_streaming
from walduck.logs import format_option, level_option

app = typer.Typer(no_args_is_help=True)
log = logging.getLogger(__name__)


def _settings(pg_dsn: str | None, kafka: str | None, slot: str | None, publication: str | None, **kw: object):
    from walduck.config import load_settings

    return load_settings(
        pg_dsn=pg_dsn, kafka_bootstrap=kafka, slot_name=slot, publication_name=publication, **kw
    )


@app.command()
def setup(
    pg_dsn: str = typer.Option(None, "--pg-dsn", help="[WALDUCK_PG_ADMIN_DSN, else WALDUCK_PG_DSN]"),
    slot: str = typer.Option(None, help="Replication slot [WALDUCK_SLOT_NAME]."),
    publication: str = typer.Option(None, help="Publication [WALDUCK_PUBLICATION_NAME]."),
    catalog_schema: str = typer.Option(None, help="[WALDUCK_CATALOG_SCHEMA]"),
) -> None:
    """Idempotent: publication, REPLICA IDENTITY FULL, state table, logical slot (as the admin DSN)."""
    from connectors.setup import setup as do_setup

    settings = _settings(pg_dsn, None, slot, publication, catalog_schema=catalog_schema)
    if pg_dsn is None:  # setup owns tables and publications: WALDUCK_PG_ADMIN_DSN when set
        settings.pg_dsn = settings.admin_dsn()
    result = do_setup(settings, ConnectorSettings().state_schema)
    typer.echo(result)


@app.command()
def run(
    pg_dsn: str = typer.Option(None, "--pg-dsn", help="[WALDUCK_PG_DSN]"),
    kafka: str = typer.Option(None, "--kafka", help="Kafka bootstrap [WALDUCK_KAFKA_BOOTSTRAP]."),
    slot: str = typer.Option(None, help="Replication slot [WALDUCK_SLOT_NAME]."),
    publication: str = typer.Option(None, help="Publication [WALDUCK_PUBLICATION_NAME]."),
    catalog_schema: str = typer.Option(None, help="[WALDUCK_CATALOG_SCHEMA]"),
    changes_topic: str = typer.Option(None, help="[WALDUCK_CHANGES_TOPIC]"),
    dlq_topic: str = typer.Option(None, help="[WALDUCK_DLQ_TOPIC]"),
    heartbeat_interval: float = typer.Option(None, help="Seconds [WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL]."),
    status_interval: float = typer.Option(None, help="Seconds [WALDUCK_CONNECTOR_STATUS_INTERVAL]."),
    metrics_port: int = typer.Option(None, help="0 = off [WALDUCK_CONNECTOR_METRICS_PORT]."),
    snapshot_mode: SnapshotMode = typer.Option(None, help="[WALDUCK_CONNECTOR_SNAPSHOT_MODE]"),
    log_level: LogLevel = level_option(),
    log_format: LogFormat = format_option(),
) -> None:
    """Stream catalog changes to Kafka until interrupted (SIGINT/SIGTERM drain and confirm first)."""
    from connectors.connector import Connector
    from walduck.health import Health, kafka_connected
    from walduck.logs import setup_logging
    from walduck.metrics import serve_metrics

    setup_logging("connector", log_level, log_format)
    settings = _settings(
        pg_dsn,
        kafka,
        slot,
        publication,
        catalog_schema=catalog_schema,
        changes_topic=changes_topic,
        dlq_topic=dlq_topic,
    )
    overrides = {
        "heartbeat_interval": heartbeat_interval,
        "status_interval": status_interval,
        "metrics_port": metrics_port,
        "snapshot_mode": snapshot_mode,
    }
    csettings = ConnectorSettings(**{k: v for k, v in overrides.items() if v is not None})
    health = Health("connector")
    if csettings.metrics_port:
        serve_metrics("connector", csettings.metrics_port, settings.metrics_host, health)

    # The delivery loop allocates a few small objects per column and holds up to max_inflight_records
    # records until Kafka acknowledges them: collect the young generation less often and keep the
    # start-up objects (modules, settings) out of every full collection.
    tune_for_streaming()

    async def main() -> None:
        if csettings.source == "debezium":  # Debezium's topics instead of a slot (connectors/debezium/)
            from connectors.debezium.source import DebeziumSource

            source = DebeziumSource(settings, csettings)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, source.stop)
            await source.run()
            return
        connector = Connector(settings, csettings)
        # ready: the slot streams and the producer holds a broker connection (docs/operations.md "Probes")
        health.check("replicationStreaming", lambda: connector.streaming)
        health.check("kafkaConnected", lambda: kafka_connected(getattr(connector.producer, "client", None)))

        run = asyncio.create_task(connector.run(), name="connector")

        def cancel_unless_streaming() -> None:
            # not streaming = connecting, waiting for the slot or for a topic, backing off: nothing is in flight
            # that a drain would confirm, so the blocked call (e.g. Kafka metadata for a missing topic, ~60 s)
            # is cancelled instead of awaited (SIGINT took ~30 s); as after a crash before streaming, the slot
            # has confirmed nothing new, so a restart resumes (or redoes the snapshot) from where it was
            if not run.done() and not connector.streaming:
                run.cancel()

        def stop() -> None:
            health.stopping = True
            connector.stop()  # streaming: drain, confirm, return (the stream loop checks every 0.5 s)
            loop.call_later(0.5, cancel_unless_streaming)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        beating = asyncio.create_task(health.heartbeat(), name="health-heartbeat")
        try:
            await run
        except asyncio.CancelledError:
            if not connector.stop_event.is_set():
                raise
            log.info("stopped while not streaming (nothing in flight)")
        finally:
            beating.cancel()

    try:
        asyncio.run(main())
    except PermanentError as exc:  # one clear line and exit 2: retrying would not fix it (issue 17)
        typer.echo(f"walduck connector: {exc}", err=True)
        raise typer.Exit(2) from None
