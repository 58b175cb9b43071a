"""A whole walduck pipeline on given services: catalog, topics, connector, compactor, query service.

Used by ``walduck up``, the end-to-end and fault tests, and the benchmarks, so they all exercise the
same processes an operator runs.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from stack.procs import Component, component_env, wait_until
from walduck.config import WalduckSettings
from walduck.lsn import format_lsn

COMPONENTS = ("connector", "compactor", "query")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    settings: WalduckSettings
    work_dir: Path
    http_port: int = field(default_factory=free_port)
    connector_metrics_port: int = field(default_factory=free_port)
    compactor_metrics_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    # True: components run as the least-privilege roles of `walduck catalog roles` (as `walduck up` and k8s/);
    # settings.pg_dsn is then the connector's and settings.pg_admin_dsn the setup/workload DSN
    least_privilege: bool = False
    # x-iam-scopes of the stack's own probes (wait_caught_up); None = unscoped (a service in WALDUCK_QUERY_IAM_OPEN mode)
    probe_scopes: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def prepare(self) -> None:
        """Migrations, topics and the connector's publication/replica identity (idempotent)."""
        from stack.catalog.migrate import apply_migrations
        from stack.services.topics import ensure_topics

        admin = self.settings.admin_dsn()
        apply_migrations(admin, self.settings.catalog_schema)
        asyncio.run(ensure_topics(self.settings.kafka_bootstrap, self.settings))
        self._cli(["connector", "setup", "--pg-dsn", admin])
        if self.least_privilege:
            from stack.catalog.roles import ensure_roles, use_roles

            use_roles(self.settings, ensure_roles(admin, self.settings), admin)

    def _cli(self, args: list[str]) -> None:
        env = component_env(self.settings, **self.extra_env)
        done = subprocess.run(
            [sys.executable, "-m", "stack.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"walduck {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    def _component(self, name: str) -> Component:
        args = {
            "connector": ["connector", "run", "--metrics-port", str(self.connector_metrics_port)],
            "compactor": ["compactor", "run", "--metrics-port", str(self.compactor_metrics_port)],
            "query": ["query", "serve", "--host", "127.0.0.1", "--port", str(self.http_port)],
        }[name]
        extra = dict(self.extra_env)
        if name == "compactor":
            # a static member of a group of this stack's own (its topics' name): a restarted compactor takes
            # its partitions back without a rebalance (docs/compactor.md, membership and failover)
            extra.setdefault("WALDUCK_COMPACTOR_GROUP_ID", f"walduck-compactor.{self.settings.changes_topic}")
            extra.setdefault("WALDUCK_COMPACTOR_GROUP_INSTANCE_ID", "compactor-0")
        env = component_env(self.settings, **extra)
        return Component(name, args, env, self.work_dir / "logs" / f"{name}.log")

    def start(self, names: tuple[str, ...] = COMPONENTS) -> None:
        for name in names:
            comp = self.components.get(name) or self._component(name)
            self.components[name] = comp
            comp.start()

    def stop(self) -> None:
        for comp in reversed(list(self.components.values())):
            comp.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{comp.tail(60)}" for name, comp in self.components.items())

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 120) -> None:
        try:
            wait_until(self.ready, timeout=timeout, what="query service /ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None

    def current_lsn(self) -> int:
        with psycopg.connect(self.settings.pg_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        from walduck.lsn import parse_lsn

        assert row is not None
        return parse_lsn(row[0])

    def read(
        self, sql: str, *, min_lsn: int | None = None, scopes: str | None = None, timeout: float = 30
    ) -> httpx.Response:
        body: dict[str, object] = {"sql": sql}
        if min_lsn is not None:
            body["min_lsn"] = format_lsn(min_lsn)
        headers = {"x-iam-scopes": scopes} if scopes is not None else {}
        return httpx.post(f"{self.base_url}/sql/read", json=body, headers=headers, timeout=timeout)

    def wait_caught_up(self, lsn: int | None = None, timeout: float = 120) -> None:
        """Block until the query service has applied everything committed up to ``lsn`` (default: now)."""
        target = self.current_lsn() if lsn is None else lsn
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                resp = self.read("SELECT 1 AS ok", min_lsn=target, scopes=self.probe_scopes, timeout=10)
                if resp.status_code == 200:
                    return
                last = f"{resp.status_code} {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise TimeoutError(f"not caught up to {format_lsn(target)} after {timeout}s: {last}\n{self.logs()}")
