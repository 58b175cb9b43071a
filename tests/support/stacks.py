"""Whole walduck stacks (connector, compactor, query service as real processes) for end-to-end tests.

``make_stack`` gives each test a fresh database, fresh topics, a unique slot/publication and its own data
dirs, on the session's PostgreSQL + Kafka; the query service's IAM is configured as a gateway would (the admin
scope bypasses dataset read scopes), so truth checks can read every dataset. IAM is either the explicit open
mode (default) or ``scoped=True`` (Timestore's scope names, as ``walduck up``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from stack.envnames import override_env
from stack.local import Stack
from stack.up import TIMESTORE_SCOPES_ENV
from stack.workload.generator import RunSummary, Workload
from walduck.config import WalduckSettings

# Two explicit IAM modes (the service refuses to start with open routes unless told so):
# - open (default): the admin scope bypasses dataset read scopes (the workload's metadata changes rewrite them);
#   SQL read stays open on purpose (WALDUCK_QUERY_IAM_OPEN=true) so Stack.wait_caught_up's unscoped probe works
# - scoped: every route needs Timestore's scope names, exactly as `walduck up` and k8s/ configure them
IAM_ENV = {"WALDUCK_QUERY_ADMIN_SCOPE": "timestore:admin", "WALDUCK_QUERY_IAM_OPEN": "true"}
SCOPED_IAM_ENV = dict(TIMESTORE_SCOPES_ENV)
SCOPED_PROBE = "timestore:sql:read"


def new_stack(
    settings: WalduckSettings, tmp_path: Path, env: dict[str, str], *, least_privilege: bool = False
) -> Stack:
    suffix = uuid.uuid4().hex[:8]
    settings.slot_name = f"walduck_{suffix}"
    settings.publication_name = f"walduck_pub_{suffix}"
    settings.data_dir = tmp_path / f"data-{suffix}"
    settings.storage_root = tmp_path / f"storage-{suffix}"
    return Stack(settings, tmp_path / f"work-{suffix}", extra_env=dict(env), least_privilege=least_privilege)


@pytest.fixture
async def make_stack(
    fresh_db: Callable[[], str], fresh_topics, tmp_path: Path
) -> AsyncIterator[Callable[..., object]]:
    stacks: list[Stack] = []

    async def factory(
        partitions: int = 4, least_privilege: bool = False, scoped: bool = False, **env: str
    ) -> Stack:
        """``least_privilege``: components run as the roles of ``walduck catalog roles`` (as ``walduck up``);
        ``scoped``: Timestore's scope names on every route (as ``walduck up``), else the explicit open mode."""
        dsn = fresh_db()
        settings = await fresh_topics(partitions=partitions, pg_dsn=dsn)
        iam = SCOPED_IAM_ENV if scoped else IAM_ENV
        stack = new_stack(settings, tmp_path, override_env(iam, env), least_privilege=least_privilege)
        stack.probe_scopes = SCOPED_PROBE if scoped else None
        await asyncio.to_thread(stack.prepare)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


def run_workload(stack: Stack, seed: int, *, rate: float = 0, duration: float = 60, **run: Any) -> RunSummary:
    """Timestore's writes into ``stack``'s catalog: :meth:`Workload.run` seeded ``seed``, by default a burst
    (``rate=0``: commits as fast as they go, for at most ``duration`` = 60 s; ``run`` bounds it further)."""
    s = stack.settings
    with Workload(s.pg_dsn, s.catalog_schema, s.storage_root, seed=seed) as wl:
        return wl.run(rate=rate, duration=duration, **run)
