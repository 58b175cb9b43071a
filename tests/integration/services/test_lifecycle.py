"""Start/stop/restart of LocalPostgres and LocalKafka in their own dirs: no stray process, data kept, clear errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stack.services.errors import PortInUse
from stack.services.kafka import KAFKA_VERSION, LocalKafka
from stack.services.postgres import LocalPostgres
from stack.services.proc import pid_alive, pids_mentioning
from stack.services.topics import ensure_topics, topic_partitions
from walduck.config import WalduckSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def own_dir() -> Iterator[Path]:
    """A dir under /tmp (not tmp_path: the postgres user must be able to reach it)."""
    root = Path(tempfile.mkdtemp(prefix="walduck-svc-"))
    yield root
    for sub in ("kafka", "postgres"):
        if (root / sub).exists():
            (LocalKafka if sub == "kafka" else LocalPostgres)(root / sub).stop()
    shutil.rmtree(root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _ps_mentions(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if text in line and "ps -eo" not in line]


def test_postgres_stop_leaves_no_process_and_restart_keeps_data(own_dir: Path) -> None:
    pg = LocalPostgres(own_dir / "postgres")
    dsn = pg.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    postmaster = pg.pid()
    assert postmaster is not None
    children = _children(postmaster)
    assert len(children) >= 3  # checkpointer, walwriter, ...
    # another process sees it running (state in the data dir)
    other = LocalPostgres(own_dir / "postgres").status()
    assert other["running"] and other["pid"] == postmaster and other["dsn"] == dsn

    assert pg.restart() == dsn  # same port kept
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)

    new_pid = pg.pid()
    assert new_pid is not None and new_pid != postmaster
    new_children = _children(new_pid)
    assert pg.stop() is True
    for pid in [postmaster, *children, new_pid, *new_children]:
        assert not pid_alive(pid), pid
    assert _ps_mentions(str(own_dir)) == []
    assert pg.status()["running"] is False
    assert pg.stop() is False  # idempotent


def test_postgres_port_in_use_is_a_readable_error(own_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {taken}.*in use"):
            LocalPostgres(own_dir / "postgres", port=taken).start()
    assert pids_mentioning(str(own_dir)) == []


def test_kafka_restart_keeps_topics_and_stop_leaves_no_jvm(own_dir: Path) -> None:
    kafka = LocalKafka(own_dir / "kafka")
    bootstrap = kafka.start()
    assert f"Kafka version: {KAFKA_VERSION}" in kafka.log_file.read_text()
    suffix = uuid.uuid4().hex[:6]
    settings = WalduckSettings(
        kafka_bootstrap=bootstrap,
        changes_topic=f"c.{suffix}",
        deltas_topic=f"d.{suffix}",
        dlq_topic=f"q.{suffix}",
        topic_partitions=2,
    )
    names = [settings.changes_topic, settings.deltas_topic, settings.dlq_topic, settings.state_topic()]
    assert sorted(asyncio.run(ensure_topics(bootstrap, settings))) == sorted(names)
    asyncio.run(_produce(bootstrap, settings.changes_topic, b"before restart"))
    first_pid = kafka.pid()
    assert first_pid is not None

    assert kafka.restart() == bootstrap  # same ports, same data
    assert kafka.pid() not in (None, first_pid)
    assert not pid_alive(first_pid)
    assert asyncio.run(topic_partitions(settings, names)) == dict.fromkeys(names, 2)
    assert asyncio.run(_consume_all(bootstrap, settings.changes_topic, 1)) == [b"before restart"]

    # status/stop from another process, through the CLI
    status = subprocess.run(
        [sys.executable, "-m", "stack.cli", "services", "status", "--json", "--data-dir", str(own_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 1, status.stderr  # postgres of this dir was never started
    info = json.loads(status.stdout)
    assert info["kafka"]["running"] is True and info["kafka"]["bootstrap"] == bootstrap
    second_pid = kafka.pid()
    assert second_pid is not None
    stop = subprocess.run(
        [sys.executable, "-m", "stack.cli", "services", "stop", "--data-dir", str(own_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "kafka: stopped" in stop.stdout
    assert not pid_alive(second_pid)
    assert _ps_mentions(str(own_dir)) == []
    assert kafka.status()["running"] is False


def test_kafka_port_in_use_is_a_readable_error(own_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(PortInUse, match=f"Kafka broker: port {taken}"):
            LocalKafka(own_dir / "kafka", port=taken).start()
    assert pids_mentioning(str(own_dir)) == []


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        while len(got) < count:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
            got.append(msg.value)
    finally:
        await consumer.stop()
    return got
