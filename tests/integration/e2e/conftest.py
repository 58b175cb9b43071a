"""The whole pipeline (connector, compactor, query service as real processes) on fresh db + topics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from walduck.stack import Stack


@pytest.fixture
async def make_stack(
    fresh_db: Callable[[], str], fresh_topics, tmp_path: Path
) -> AsyncIterator[Callable[..., object]]:
    stacks: list[Stack] = []

    async def factory(partitions: int = 4, **env: str) -> Stack:
        dsn = fresh_db()
        settings = await fresh_topics(partitions=partitions, pg_dsn=dsn)
        suffix = uuid.uuid4().hex[:8]
        settings.slot_name = f"walduck_{suffix}"
        settings.publication_name = f"walduck_pub_{suffix}"
        settings.data_dir = tmp_path / f"data-{suffix}"
        settings.storage_root = tmp_path / f"storage-{suffix}"
        stack = Stack(
            settings,
            tmp_path / f"work-{suffix}",
            extra_env={"WALDUCK_ADMIN_SCOPE": "timestore:admin", **env},
        )
        await asyncio.to_thread(stack.prepare)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()
