"""Fault-suite fixtures: whole stacks on fresh db + topics (``make_stack`` from ``support.stacks``), or on
services of their own: ``own_services`` starts a PostgreSQL + Kafka that only this test uses, for tests that restart them.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.local import free_port
from stack.services.kafka import LocalKafka
from stack.services.postgres import LocalPostgres, create_database
from support.stacks import IAM_ENV, make_stack, new_stack
from walduck.config import WalduckSettings

__all__ = ["IAM_ENV", "make_stack", "new_stack"]


@dataclass
class OwnServices:
    postgres: LocalPostgres
    kafka: LocalKafka
    settings: WalduckSettings


@pytest.fixture
def own_services(tmp_path: Path) -> Iterator[OwnServices]:
    """A PostgreSQL + Kafka (free ports, own temp dirs) only this test uses, so it may restart them."""
    root = Path(tempfile.mkdtemp(prefix="walduck-faults-"))
    pg = LocalPostgres(root / "postgres", port=free_port())
    kafka = LocalKafka(root / "kafka", port=free_port(), controller_port=free_port())
    try:
        pg_dsn = pg.start()
        bootstrap = kafka.start()
        dsn = create_database(pg_dsn, "faults")
        suffix = uuid.uuid4().hex[:8]
        settings = WalduckSettings(
            data_dir=tmp_path / "data",
            storage_root=tmp_path / "storage",
            pg_dsn=dsn,
            kafka_bootstrap=bootstrap,
            changes_topic=f"walduck.changes.{suffix}",
            deltas_topic=f"walduck.deltas.{suffix}",
            dlq_topic=f"walduck.dlq.{suffix}",
            topic_partitions=4,
        )
        yield OwnServices(pg, kafka, settings)
    finally:
        with contextlib.suppress(Exception):
            kafka.stop()
        with contextlib.suppress(Exception):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)
