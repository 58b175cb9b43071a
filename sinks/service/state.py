"""What every route needs, hung on ``app.state.svc``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sinks.context import staleness
from sinks.service.admin_snapshot import SnapshotSource
from sinks.service.audit import AuditSink
from sinks.service.catalog import Catalog
from sinks.service.iam import IamPolicy, Principal
from sinks.service.limits import QueryRunner
from sinks.service.settings import QuerySettings


class Store(SnapshotSource, Protocol):
    """The part of ``sinks.context.store.ContextStore`` the service uses (the admin snapshot's too)."""

    def reader(self) -> Any: ...
    def progress(self) -> dict[int, Any]: ...
    def applied_lsn(self) -> int: ...
    async def wait_for_lsn(self, lsn: int, timeout_s: float) -> bool: ...
    def datasets(self) -> list[Any]: ...
    def rebuild(self, dataset_id: str | None = None, reason: str = "manual") -> None: ...
    def request_rebuild(self, dataset_id: str | None = None, reason: str = "manual") -> Any: ...


Planner = Callable[[Any, Any, set[str]], Any]


@dataclass(slots=True)
class ServiceState:
    store: Store
    settings: QuerySettings
    runner: QueryRunner
    planner: Planner
    audit: AuditSink
    catalog: Catalog | None
    # /ready's dependencies beyond the contexts (name -> is it up now), and whether the process is stopping
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    stopping: Callable[[], bool] = lambda: False
    started_at: float = field(default_factory=time.monotonic)
    _pg_checked: tuple[float, bool] | None = None
    # the IAM rules of ``settings``, built once (sinks.service.iam.IamPolicy)
    iam: IamPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.iam = self.settings.iam_policy()

    def readable(self, principal: Principal, datasets: list[Any]) -> set[str]:
        return self.iam.readable(principal, datasets)

    async def postgres_reachable(self, cache_s: float = 5.0) -> bool:
        """The catalog answers (``SELECT 1`` as the read role), cached ``cache_s`` so probes do not load it."""
        if self.catalog is None:
            return True
        now = time.monotonic()
        if self._pg_checked is None or now - self._pg_checked[0] > cache_s:
            self._pg_checked = (now, await self.catalog.reachable())
        return self._pg_checked[1]

    def staleness_seconds(self) -> float | None:
        """The context's staleness (``sinks.context.staleness``: max over its shards; None before anything)."""
        return staleness.overall(getattr(p, "staleness_s", None) for p in self.store.progress().values())

    def bootstrapped(self) -> bool:
        progress = self.store.progress()
        return bool(progress) and all(getattr(p, "bootstrapped", False) for p in progress.values())
