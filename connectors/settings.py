"""Connector knobs (``WALDUCK_CONNECTOR_*`` environment variables; the older ``WALDUCK_<FIELD>`` names still work:
:func:`walduck.config.component_config`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic_settings import BaseSettings

from walduck.config import component_config


class SnapshotMode(StrEnum):
    """Debezium's vocabulary.

    * ``initial``: snapshot when the slot is created (or a previous snapshot never finished), then stream.
    * ``never`` / ``no_data``: create the slot without a snapshot and stream from its consistent point.
    * ``always``: drop the slot and snapshot on every start, then stream.
    * ``initial_only``: snapshot like ``initial`` and exit without streaming.
    """

    INITIAL = "initial"
    NEVER = "never"
    NO_DATA = "no_data"
    ALWAYS = "always"
    INITIAL_ONLY = "initial_only"


class ConnectorSettings(BaseSettings):
    model_config = component_config("WALDUCK_CONNECTOR_")

    # seconds between pg_logical_emit_message heartbeats (0 = off)
    heartbeat_interval: float = 1.0
    heartbeat_prefix: str = "walduck.heartbeat"
    # after draining what the server sent, publish a heartbeat at the last published commit's end LSN to
    # every partition (so idle shards claim that LSN at once; read-your-writes does not wait for a heartbeat)
    watermarks: bool = True
    # seconds between unsolicited standby status updates
    status_interval: float = 1.0
    # Prometheus /metrics port (0 = not served); WALDUCK_METRICS_PORT, the old name, still works
    metrics_port: int = 0
    snapshot_mode: SnapshotMode = SnapshotMode.INITIAL
    # schema of the connector's own state table (snapshot-done marker); not published
    state_schema: str = "walduck"
    # back-pressure: records produced but not yet acknowledged by Kafka
    max_inflight_records: int = 50_000
    # the slot is still held by another walsender ("replication slot … is active for PID …", e.g. the one of a
    # connector killed a moment ago, until PostgreSQL notices its socket is gone): retry START_REPLICATION
    # this often (seconds), not with the reconnect backoff
    slot_retry_interval: float = 0.2
    # after waiting this long (seconds) for the slot, pg_terminate_backend its holder, once per wait; 0 = never.
    # Only safe when no other live connector can hold the slot (k8s: one replica, strategy Recreate)
    slot_takeover_after: float = 0.0
    # reconnect backoff (seconds): initial, doubled per failure up to max
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # how INSERT rows become JSON (connectors/rowjson.py): auto = the compiled encoder when it was built,
    # else the pure-Python one (with a warning); native = refuse to start without it; python = never compiled
    row_encoder: Literal["auto", "native", "python"] = "auto"
    # rows per fetch while reading the snapshot
    snapshot_fetch_rows: int = 5_000
    # where change records come from (issue 18): pgoutput = walduck's own replication slot; debezium = the
    # topics of a Debezium PostgreSQL connector already running on the catalog (connectors/debezium/,
    # docs/operations.md "Debezium as a source")
    source: Literal["pgoutput", "debezium"] = "pgoutput"
    # Debezium's topic.prefix (its topics are <prefix>.<catalog schema>.<table> and <prefix>.transaction)
    debezium_topic_prefix: str = ""
    # the table Debezium's heartbeat.action.query updates (in the catalog schema and the publication): its
    # transactions become walduck heartbeats, so idle datasets still claim the current LSN
    debezium_heartbeat_table: str = "walduck_debezium_heartbeat"
    # consumer group holding the Debezium source's input offsets ("" = walduck-debezium-<prefix>)
    debezium_group: str = ""
    # Debezium's snapshot.mode as far as walduck is concerned: initial = its topics start with a snapshot, whose
    # reads are taken and streamed transactions held until it is complete; no_data = streamed changes only
    # (a snapshot read is refused to the DLQ)
    debezium_snapshot_mode: Literal["initial", "no_data"] = "no_data"
