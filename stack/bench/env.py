"""Where a benchmark runs: services (given or local), a fresh database, unique topics/slot, a work dir.

Each scenario gets its own database (dropped afterwards), its own topic/slot suffix and a directory under
``<data_dir>/bench/``; services named by ``WALDUCK_PG_DSN`` / ``WALDUCK_KAFKA_BOOTSTRAP`` are used as they
are, otherwise the local ones of ``walduck services`` are started (and stopped again if this run started them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.services.manager import ServiceEndpoints, ServiceManager
from stack.services.postgres import create_database, drop_database
from stack.workload.bulk import BulkSummary, bulk_load
from walduck.config import WalduckSettings, load_settings


@dataclass
class BenchServices:
    """Services for a whole ``walduck bench`` invocation."""

    base: WalduckSettings
    endpoints: ServiceEndpoints
    manager: ServiceManager
    started_here: list[str]

    @classmethod
    def start(cls, data_dir: Path | None = None) -> BenchServices:
        base = load_settings(data_dir=data_dir)
        manager = ServiceManager(base)
        before = manager.status()
        endpoints = manager.start()
        started = [
            name for name, info in before.items() if not info.get("external") and not info.get("running")
        ]
        return cls(base, endpoints, manager, started)

    def stop(self) -> None:
        if self.started_here:
            self.manager.stop()


@dataclass
class ScenarioEnv:
    """One scenario's isolated settings: fresh database, unique topics and slot, own dirs."""

    settings: WalduckSettings
    work_dir: Path
    dbname: str
    admin_dsn: str

    @property
    def dsn(self) -> str:
        return self.settings.pg_dsn

    def bulk_load(self, **options: Any) -> BulkSummary:
        """:func:`stack.workload.bulk.bulk_load` into this scenario's catalog and storage root."""
        return bulk_load(self.dsn, self.settings.catalog_schema, self.settings.storage_root, **options)


@contextlib.contextmanager
def scenario_env(
    services: BenchServices, scenario: str, topics: bool = False, partitions: int = 4
) -> Iterator[ScenarioEnv]:
    from stack.catalog.migrate import apply_migrations

    suffix = f"{scenario.replace('-', '_')}_{time.strftime('%H%M%S')}_{uuid.uuid4().hex[:6]}"
    dbname = f"wdbench_{suffix}"
    admin = services.endpoints.pg_dsn
    dsn = create_database(admin, dbname)
    work_dir = (Path(services.base.data_dir) / "bench" / suffix).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = WalduckSettings(
        data_dir=work_dir / "data",
        storage_root=work_dir / "storage",
        pg_dsn=dsn,
        kafka_bootstrap=services.endpoints.kafka_bootstrap,
        catalog_schema=services.base.catalog_schema,
        changes_topic=f"wdbench.changes.{suffix}",
        deltas_topic=f"wdbench.deltas.{suffix}",
        dlq_topic=f"wdbench.dlq.{suffix}",
        topic_partitions=partitions,
        slot_name=f"wdbench_{suffix}",
        publication_name=services.base.publication_name,
    )
    apply_migrations(dsn, settings.catalog_schema)
    if topics:
        from stack.services.topics import ensure_topics

        asyncio.run(ensure_topics(settings.kafka_bootstrap, settings))
    env = ScenarioEnv(settings, work_dir, dbname, admin)
    try:
        yield env
    finally:
        keep = bool(os.environ.get("WALDUCK_BENCH_KEEP"))
        if topics and not keep:
            from stack.services.topics import delete_topics

            with contextlib.suppress(Exception):
                asyncio.run(
                    delete_topics(
                        settings,
                        [
                            settings.changes_topic,
                            settings.deltas_topic,
                            settings.dlq_topic,
                            settings.state_topic(),
                        ],
                    )
                )
        if not keep:
            with contextlib.suppress(Exception):
                drop_database(admin, dbname)
            shutil.rmtree(work_dir, ignore_errors=True)
