"""Fault-suite fixtures: whole stacks on fresh db + topics (session services), or on services of their own.

``make_stack`` is the e2e pattern (fresh database, fresh topics, unique slot/publication, own data dirs) with the
query service's IAM configured as a gateway would (admin scope bypasses dataset checks), so truth checks can read
every dataset. ``own_services`` starts a PostgreSQL + Kafka that only this test uses, for tests that restart them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from walduck.config import WalduckSettings
from walduck.services.kafka import LocalKafka
from walduck.services.postgres import LocalPostgres, create_database
from walduck.stack import Stack, free_port

# the admin scope bypasses dataset read scopes (the workload's metadata changes rewrite them); SQL read stays
# open so Stack.wait_caught_up's unscoped probe works
IAM_ENV = {"TIMESTORE_ADMIN_SCOPE": "timestore:admin"}


@pytest.fixture
async def make_stack(
    fresh_db: Callable[[], str], fresh_topics, tmp_path: Path
) -> AsyncIterator[Callable[..., object]]:
    stacks: list[Stack] = []

    async def factory(partitions: int = 4, **env: str) -> Stack:
        dsn = fresh_db()
        settings = await fresh_topics(partitions=partitions, pg_dsn=dsn)
        stack = new_stack(settings, tmp_path, {**IAM_ENV, **env})
        await asyncio.to_thread(stack.prepare)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


def new_stack(settings: WalduckSettings, tmp_path: Path, env: dict[str, str]) -> Stack:
    suffix = uuid.uuid4().hex[:8]
    settings.slot_name = f"walduck_{suffix}"
    settings.publication_name = f"walduck_pub_{suffix}"
    settings.data_dir = tmp_path / f"data-{suffix}"
    settings.storage_root = tmp_path / f"storage-{suffix}"
    return Stack(settings, tmp_path / f"work-{suffix}", extra_env=dict(env))


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
