"""What the job routes need, built once per app: the job store, layer cache, runner and GC task."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from sinks.service.jobs import gc
from sinks.service.jobs.layers import LayerCache
from sinks.service.jobs.runner import JobRunner
from sinks.service.jobs.settings import JobSettings
from sinks.service.jobs.store import JobStore


@dataclass
class JobService:
    settings: JobSettings
    jobs: JobStore
    layers: LayerCache
    runner: JobRunner
    _gc_task: asyncio.Task[None] | None = field(default=None, init=False)

    @classmethod
    def build(cls, store: Any, planner: Any, iam: Any, settings: JobSettings | None = None) -> JobService:
        settings = settings or JobSettings()
        layers = LayerCache(
            settings.layer_dir,
            max_bytes=settings.layer_max_bytes,
            max_count=settings.layer_max_count,
            ttl_s=settings.layer_ttl_s,
        )
        jobs = JobStore()
        runner = JobRunner(store, planner, iam, settings, layers, results_bytes=jobs.result_bytes)
        return cls(settings, jobs, layers, runner)

    def start(self) -> None:
        self._gc_task = asyncio.get_running_loop().create_task(
            gc.loop(self.jobs, self.layers, self.settings.gc_interval_s)
        )

    async def stop(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
        self.runner.close()

    def gc(self) -> gc.GcReport:
        return gc.run_once(self.jobs, self.layers)
