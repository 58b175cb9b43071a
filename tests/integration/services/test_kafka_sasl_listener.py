"""`walduck services start --kafka-protocol SASL_PLAINTEXT`: a local broker clients reach only with SCRAM."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from stack.services.errors import ServiceError
from stack.services.kafka import LocalKafka, quiet_client_logs
from stack.services.topics import ensure_topics
from walduck.config import WalduckSettings
from walduck.kafka_security import client_kwargs, start_client

pytestmark = pytest.mark.integration


@pytest.fixture
def services_dir() -> Iterator[Path]:
    # walduck-test-* + owner.pid + kafka/: what tests/conftest.py reaps if this session dies
    root = Path(tempfile.mkdtemp(prefix="walduck-test-saslcli-"))
    (root / "owner.pid").write_text(str(os.getpid()))
    try:
        yield root
    finally:
        LocalKafka(root / "kafka").stop()
        shutil.rmtree(root, ignore_errors=True)


def _walduck(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", *args], env=env, capture_output=True, text=True, timeout=240
    )


def _exports(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("export WALDUCK_KAFKA_"):
            name, _, value = line.removeprefix("export ").partition("=")
            out[name] = value.strip("'")
    return out


async def test_services_start_with_a_sasl_plaintext_listener(services_dir: Path, pg_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALDUCK_")}
    env["WALDUCK_PG_DSN"] = pg_dsn  # external PostgreSQL: only Kafka is started here
    data = str(services_dir)
    run = await asyncio.to_thread(
        _walduck, "services", "start", "--data-dir", data, "--kafka-protocol", "SASL_PLAINTEXT", env=env
    )
    assert run.returncode == 0, run.stdout + run.stderr
    exported = _exports(run.stdout)
    assert exported["WALDUCK_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert exported["WALDUCK_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert os.stat(exported["WALDUCK_KAFKA_SASL_PASSWORD_FILE"]).st_mode & 0o077 == 0  # owner-only
    assert "WALDUCK_KAFKA_SASL_PASSWORD" not in exported  # the file, never the secret, is printed

    # what it printed is all a client needs
    suffix = uuid.uuid4().hex[:8]
    settings = WalduckSettings(
        **{k.removeprefix("WALDUCK_").lower(): v for k, v in exported.items()},
        changes_topic=f"c.{suffix}",
        deltas_topic=f"d.{suffix}",
        dlq_topic=f"q.{suffix}",
        topic_partitions=1,
    )
    assert await ensure_topics(settings.kafka_bootstrap, settings)
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all")
    await start_client(producer, settings)
    try:
        await producer.send_and_wait(settings.changes_topic, b"over SCRAM")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        settings.changes_topic, **client_kwargs(settings), auto_offset_reset="earliest"
    )
    await start_client(consumer, settings)
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
        assert msg.value == b"over SCRAM"
    finally:
        await consumer.stop()

    # no way in without SASL
    plain = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=3000)
    with quiet_client_logs(), pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(plain.start(), 20)
    await plain.close()

    # status says which listener runs; asking for another one while it runs is refused, not ignored
    kafka = LocalKafka(services_dir / "kafka")
    assert kafka.status()["security_protocol"] == "SASL_PLAINTEXT"
    other = await asyncio.to_thread(
        _walduck, "services", "start", "--data-dir", data, "--kafka-protocol", "SSL", env=env
    )
    assert other.returncode == 1
    assert "already runs with a SASL_PLAINTEXT listener" in " ".join((other.stdout + other.stderr).split())
    stop = await asyncio.to_thread(_walduck, "services", "stop", "--data-dir", data, env=env)
    assert stop.returncode == 0 and not kafka.is_running(), stop.stdout + stop.stderr


def test_sasl_on_storage_formatted_without_the_scram_user_is_refused(tmp_path: Path) -> None:
    # a data dir formatted by an older walduck (no --add-scram): the node could not log in to itself
    kafka = LocalKafka(tmp_path / "kafka", protocol="SASL_PLAINTEXT")
    kafka.log_dirs.mkdir(parents=True)
    (kafka.log_dirs / "meta.properties").write_text("cluster.id=old\nnode.id=1\nversion=1\n")
    with pytest.raises(ServiceError, match="formatted without the SCRAM user"):
        kafka.start()
    assert not kafka.is_running()
