"""The pipeline over a secured Kafka listener (SASL_SSL, SCRAM-SHA-512, a throwaway CA), as on Strimzi.

A second local broker, started by ``LocalKafka(protocol=SASL_SSL)``, has no PLAINTEXT listener at all: the
connector, compactor, query service and the test's own clients only reach it with the ``WALDUCK_KAFKA_*``
security settings. A wrong password or an untrusted CA ends a component at start with a clear error
instead of an endless reconnect loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from stack.local import free_port
from stack.procs import component_env
from stack.services.kafka import LocalKafka, quiet_client_logs
from support.stacks import IAM_ENV, new_stack, run_workload
from support.truth import assert_stack_matches_postgres
from walduck.config import WalduckSettings
from walduck.kafka_security import KafkaSecurityError, client_kwargs, start_client

pytestmark = pytest.mark.integration

MIX = {"ingest": 5, "new_manifest_version": 1, "retention": 1, "compaction": 1, "metadata_change": 0.5}


@pytest.fixture(scope="module")
def secured_kafka() -> Iterator[LocalKafka]:
    # walduck-test-* + owner.pid: a session that dies leaves a broker tests/conftest.py reaps
    root = Path(tempfile.mkdtemp(prefix="walduck-test-kafkasec-"))
    (root / "owner.pid").write_text(str(os.getpid()))
    kafka = LocalKafka(root / "kafka", protocol="SASL_SSL")
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.stop()
        shutil.rmtree(root, ignore_errors=True)


def _settings(kafka: LocalKafka, **overrides: object) -> WalduckSettings:
    suffix = uuid.uuid4().hex[:10]
    return kafka.client_settings(
        changes_topic=f"walduck.changes.{suffix}",
        deltas_topic=f"walduck.deltas.{suffix}",
        dlq_topic=f"walduck.dlq.{suffix}",
        topic_partitions=2,
        **overrides,
    )


async def test_pipeline_over_sasl_ssl(
    secured_kafka: LocalKafka, fresh_db: Callable[[], str], tmp_path: Path
) -> None:
    settings = _settings(secured_kafka, pg_dsn=fresh_db())
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_ssl_cafile is not None and settings.kafka_ssl_check_hostname

    # the broker has no plaintext way in
    plain = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=3000)
    with quiet_client_logs(), pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(plain.start(), 20)
    await plain.close()

    stack = new_stack(settings, tmp_path, IAM_ENV)
    await asyncio.to_thread(stack.prepare)  # catalog + topics (admin client over SASL_SSL)
    try:
        run_workload(stack, 31, datasets=2, days=2, partitions_per_shard=3, max_commits=15, mix=MIX)
        stack.start()
        await asyncio.to_thread(stack.wait_ready, 180)
        summary = await asyncio.to_thread(
            run_workload, stack, 32, datasets=3, days=2, partitions_per_shard=3, max_commits=30, mix=MIX
        )
        assert summary.commits >= 30
        # SQL equals the Parquet truth; the compactor's deltas (read back over SASL_SSL) equal PostgreSQL's
        # visible partitions
        await assert_stack_matches_postgres(stack, 3)
    finally:
        stack.stop()


@pytest.mark.parametrize("client", ["producer", "consumer", "admin"])
async def test_wrong_password_is_a_clear_error_not_a_hang(secured_kafka: LocalKafka, client: str) -> None:
    bad = _settings(secured_kafka, kafka_sasl_password="not-the-password")
    make = {"producer": AIOKafkaProducer, "consumer": AIOKafkaConsumer, "admin": AIOKafkaAdminClient}[client]
    instance = make(**client_kwargs(bad))
    started = time.monotonic()
    with (
        quiet_client_logs(),
        pytest.raises(KafkaSecurityError, match="refused the SCRAM-SHA-512 login of user 'walduck'"),
    ):
        await asyncio.wait_for(start_client(instance, bad), 30)
    assert time.monotonic() - started < 15
    await instance.close() if client == "admin" else await instance.stop()


async def test_untrusted_ca_is_a_clear_tls_error(secured_kafka: LocalKafka) -> None:
    bad = _settings(secured_kafka, kafka_ssl_cafile=None)  # the system trust store does not know our CA
    consumer = AIOKafkaConsumer(**client_kwargs(bad))
    with (
        quiet_client_logs(),
        pytest.raises(KafkaSecurityError, match=r"TLS handshake failed.*CERTIFICATE_VERIFY_FAILED"),
    ):
        await asyncio.wait_for(start_client(consumer, bad), 30)
    await consumer.stop()


@pytest.mark.parametrize("component", ["compactor", "connector", "query"])
def test_component_with_wrong_password_exits_with_the_reason(
    secured_kafka: LocalKafka, component: str, fresh_db: Callable[[], str], tmp_path: Path
) -> None:
    bad = _settings(
        secured_kafka, pg_dsn=fresh_db(), data_dir=tmp_path / "data", kafka_sasl_password="not-the-password"
    )
    args = {
        "compactor": ["compactor", "run", "--metrics-port", "0"],
        "connector": ["connector", "run", "--metrics-port", "0"],
        # the API would serve ever staler contexts: the process stops instead
        "query": ["query", "serve", "--host", "127.0.0.1", "--port", str(free_port())],
    }[component]
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        # open IAM on purpose: this test is about the Kafka login, not the scopes (the service refuses to start
        # unscoped otherwise, exit 2, before it ever connects)
        env=component_env(bad, WALDUCK_IAM_OPEN="true"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "KafkaSecurityError" in output and "refused the SCRAM-SHA-512 login of user 'walduck'" in output, (
        output[-3000:]
    )
    assert took < 60, f"{component} took {took:.0f}s to give up"
