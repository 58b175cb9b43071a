"""Start, stop and inspect the services walduck needs: local ones under ``settings.data_dir``, or external ones.

``settings.pg_dsn`` / ``settings.kafka_bootstrap`` name external services: those are only checked, never started
or stopped. Otherwise PostgreSQL lives in ``<data_dir>/postgres`` and Kafka in ``<data_dir>/kafka``; ones already
running there (started by another process) are reused.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from stack.services.errors import ServiceError
from stack.services.kafka import LocalKafka, _metadata_ok, quiet_client_logs
from stack.services.postgres import LocalPostgres
from walduck.config import KafkaSecurityProtocol, WalduckSettings


@dataclass(frozen=True)
class ServiceEndpoints:
    pg_dsn: str
    kafka_bootstrap: str
    # the WalduckSettings security fields a client of the local Kafka needs (empty: external, or PLAINTEXT)
    kafka_security: dict[str, Any] = field(default_factory=dict)

    def apply(self, settings: WalduckSettings) -> None:
        """Point ``settings`` at these services (DSN, bootstrap and the local Kafka's security)."""
        settings.pg_dsn, settings.kafka_bootstrap = self.pg_dsn, self.kafka_bootstrap
        for name, value in self.kafka_security.items():
            setattr(settings, name, value)


class ServiceManager:
    def __init__(
        self, settings: WalduckSettings, kafka_protocol: KafkaSecurityProtocol | str | None = None
    ) -> None:
        """``kafka_protocol``: the local Kafka's client listener (None: as it last ran, else PLAINTEXT)."""
        self.settings = settings
        data_dir = Path(settings.data_dir).resolve()
        self.postgres: LocalPostgres | None = (
            None if settings.pg_dsn else LocalPostgres(data_dir / "postgres")
        )
        self.kafka: LocalKafka | None = (
            None if settings.kafka_bootstrap else LocalKafka(data_dir / "kafka", protocol=kafka_protocol)
        )
        # seconds each service took to become usable in the last start()
        self.timings: dict[str, float] = {}

    def start(self) -> ServiceEndpoints:
        """Both services (started in parallel when local); raises ServiceError with the reason otherwise."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            pg = pool.submit(self._start_postgres)
            kafka = pool.submit(self._start_kafka)
            errors: list[str] = []
            results: list[str] = []
            for future in (pg, kafka):
                try:
                    results.append(future.result())
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
        if errors:
            raise ServiceError("\n".join(errors))
        security = self.kafka.client_security() if self.kafka is not None else {}
        if security.get("kafka_security_protocol") == KafkaSecurityProtocol.PLAINTEXT:
            security = {}
        return ServiceEndpoints(pg_dsn=results[0], kafka_bootstrap=results[1], kafka_security=security)

    def _start_postgres(self) -> str:
        began = time.monotonic()
        try:
            return self._start_postgres_now()
        finally:
            self.timings["postgres"] = time.monotonic() - began

    def _start_kafka(self) -> str:
        began = time.monotonic()
        try:
            return self._start_kafka_now()
        finally:
            self.timings["kafka"] = time.monotonic() - began

    def _start_postgres_now(self) -> str:
        if self.postgres is not None:
            return self.postgres.start()
        dsn = self.settings.pg_dsn
        try:
            with psycopg.connect(dsn, connect_timeout=10):
                pass
        except psycopg.OperationalError as exc:
            raise ServiceError(f"external PostgreSQL {dsn!r} does not accept connections: {exc}") from None
        return dsn

    def _start_kafka_now(self) -> str:
        if self.kafka is not None:
            return self.kafka.start()
        bootstrap = self.settings.kafka_bootstrap
        try:
            with quiet_client_logs():
                asyncio.run(_metadata_ok(self.settings))
        except Exception as exc:
            raise ServiceError(
                f"external Kafka {bootstrap!r} does not answer: {type(exc).__name__}: {exc}"
            ) from None
        return bootstrap

    def stop(self) -> dict[str, bool]:
        """Stop the local services (external ones are left alone); which ones were running."""
        stopped: dict[str, bool] = {}
        if self.kafka is not None:
            stopped["kafka"] = self.kafka.stop()
        if self.postgres is not None:
            stopped["postgres"] = self.postgres.stop()
        return stopped

    def status(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self.postgres is not None:
            out["postgres"] = {"external": False, **self.postgres.status()}
        else:
            out["postgres"] = {"external": True, "service": "postgres", "dsn": self.settings.pg_dsn}
        if self.kafka is not None:
            out["kafka"] = {"external": False, **self.kafka.status()}
        else:
            out["kafka"] = {"external": True, "service": "kafka", "bootstrap": self.settings.kafka_bootstrap}
        return out
