"""`walduck kafka ensure-topics` creates the four topics (changes, deltas, DLQ, compactor state) with the configured configs, idempotently, and fails
with exit 2 and one line when Kafka cannot be reached (issue 17: topic creation usable as an init Job)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", "kafka", "ensure-topics"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {e[0]: e[1] for r in responses for resource in r.resources for e in resource[4]}
    finally:
        await admin.close()


async def test_ensure_topics_creates_then_reports_existing(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    names = {f"WALDUCK_{k}_TOPIC": f"it.{k.lower()}.{suffix}" for k in ("CHANGES", "DELTAS", "DLQ")}
    names["WALDUCK_COMPACTOR_STATE_TOPIC"] = f"it.compactor-state.{suffix}"
    env = {
        "WALDUCK_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "WALDUCK_TOPIC_PARTITIONS": "3",
        "WALDUCK_TOPIC_MIN_INSYNC_REPLICAS": "1",
        "WALDUCK_DLQ_RETENTION_MS": "3600000",
        **names,
    }
    first = _run(env)
    assert first.returncode == 0, first.stderr
    assert [line.split("\t")[1] for line in first.stdout.splitlines()] == ["created"] * 4
    dlq = await _configs(kafka_bootstrap, names["WALDUCK_DLQ_TOPIC"])
    assert dlq["retention.ms"] == "3600000" and dlq["min.insync.replicas"] == "1"
    changes = await _configs(kafka_bootstrap, names["WALDUCK_CHANGES_TOPIC"])
    assert changes["retention.ms"] == str(7 * 24 * 3600 * 1000)  # the 7-day default
    state = await _configs(kafka_bootstrap, names["WALDUCK_COMPACTOR_STATE_TOPIC"])
    assert state["cleanup.policy"] == "compact"
    again = _run(env)
    assert (
        again.returncode == 0
        and [line.split("\t")[1] for line in again.stdout.splitlines()] == ["exists"] * 4
    )


def test_ensure_topics_unreachable_is_exit_2_and_one_line() -> None:
    done = _run({"WALDUCK_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert [
        line for line in done.stderr.splitlines() if line.startswith("walduck kafka ensure-topics: error:")
    ]
    assert "Traceback" not in done.stderr
