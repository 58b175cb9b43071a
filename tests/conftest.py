"""Fixtures every test module uses: real PostgreSQL + Kafka for the session, fresh databases and topics.

- ``services`` (session): local PostgreSQL (Debian binaries, run as the ``postgres`` user when root) and local
  Kafka 4.x (Maven Central jars) in a ``/tmp/walduck-test-*`` dir, started in parallel and stopped at the end;
  or external ones from ``WALDUCK_TEST_PG_DSN`` / ``WALDUCK_TEST_KAFKA_BOOTSTRAP``. If either cannot be had,
  every test using it FAILS with the reason (never skips).
- ``pg_dsn`` / ``kafka_bootstrap``: the superuser DSN (db ``postgres``) and the bootstrap address.
- ``fresh_db()``: a new uniquely named database, its DSN (dropped at teardown with its sessions and slots).
- ``await fresh_topics(partitions=4, pg_dsn=None)``: WalduckSettings whose changes/deltas/dlq topics (already
  created) and slot name carry a unique suffix, services filled in, data dirs under the test's tmp_path.
- ``--long`` runs tests marked ``long``; without it they are deselected, and the summary says how many.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from stack.services.kafka import LocalKafka
from stack.services.manager import ServiceEndpoints, ServiceManager
from stack.services.postgres import LocalPostgres, create_database, drop_database
from stack.services.proc import pid_alive
from stack.services.topics import delete_topics, ensure_topics
from walduck.config import WalduckSettings

TEST_DIR_PREFIX = "walduck-test-"
_summary: dict[str, object] = {}


# -- --long ------------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", default=False, help="also run the long variants (tests marked `long`)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: long fault/bench variants, run with --long")
    config.addinivalue_line("markers", "integration: needs the real PostgreSQL + Kafka")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    long_items = [item for item in items if item.get_closest_marker("long") is not None]
    if long_items:
        items[:] = [item for item in items if item.get_closest_marker("long") is None]
        config.hook.pytest_deselected(items=long_items)
        _summary["long_deselected"] = len(long_items)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    count = _summary.get("long_deselected")
    return [f"walduck: {count} long test(s) deselected; run them with --long"] if count else []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    count = _summary.get("long_deselected")
    if count:
        terminalreporter.write_line(
            f"walduck: {count} long test(s) deselected (not run); run them with --long"
        )
    timings = _summary.get("service_timings")
    if timings:
        terminalreporter.write_line(f"walduck: test services ready in {timings}")


# -- services ----------------------------------------------------------------------------------------------
def _reap_stale_test_dirs() -> None:
    """Stop services left by earlier test sessions that died (their owner pid is gone) and remove their dirs."""
    for root in Path(tempfile.gettempdir()).glob(f"{TEST_DIR_PREFIX}*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        with contextlib.suppress(Exception):
            LocalKafka(root / "kafka").stop()
        with contextlib.suppress(Exception):
            LocalPostgres(root / "postgres").stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceEndpoints]:
    """PostgreSQL + Kafka for the whole session (local ones unless WALDUCK_TEST_* name external ones)."""
    pg_env = os.environ.get("WALDUCK_TEST_PG_DSN", "")
    kafka_env = os.environ.get("WALDUCK_TEST_KAFKA_BOOTSTRAP", "")
    _reap_stale_test_dirs()
    root = Path(tempfile.mkdtemp(prefix=TEST_DIR_PREFIX))
    (root / "owner.pid").write_text(str(os.getpid()))
    manager = ServiceManager(WalduckSettings(data_dir=root, pg_dsn=pg_env, kafka_bootstrap=kafka_env))

    def cleanup() -> None:
        with contextlib.suppress(Exception):
            manager.stop()
        if not os.environ.get("WALDUCK_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)

    atexit.register(cleanup)  # also when the session is interrupted
    try:
        endpoints = manager.start()
    except Exception as exc:
        logs = "\n".join(
            f"  {name}: {info.get('log')}" for name, info in manager.status().items() if info.get("log")
        )
        with contextlib.suppress(Exception):
            manager.stop()
        pytest.fail(
            f"walduck test services could not start (PostgreSQL + Kafka are required, tests are not skipped):\n"
            f"{exc}\nlogs:\n{logs}",
            pytrace=False,
        )
    _summary["service_timings"] = ", ".join(f"{k} {v:.1f}s" for k, v in manager.timings.items())
    try:
        yield endpoints
    finally:
        cleanup()
        atexit.unregister(cleanup)


@pytest.fixture(scope="session")
def pg_dsn(services: ServiceEndpoints) -> str:
    """Superuser DSN of the test PostgreSQL, database ``postgres``."""
    return services.pg_dsn


@pytest.fixture(scope="session")
def kafka_bootstrap(services: ServiceEndpoints) -> str:
    return services.kafka_bootstrap


@pytest.fixture
def fresh_db(pg_dsn: str) -> Iterator[Callable[[], str]]:
    """Factory: ``fresh_db()`` creates a uniquely named database and returns its DSN; all dropped at teardown."""
    created: list[str] = []

    def make() -> str:
        name = f"wd_{time.strftime('%H%M%S')}_{uuid.uuid4().hex[:8]}"
        dsn = create_database(pg_dsn, name)
        created.append(name)
        return dsn

    yield make
    for name in reversed(created):
        drop_database(pg_dsn, name)


class FreshTopics(Protocol):
    def __call__(self, partitions: int = 4, pg_dsn: str | None = None) -> Awaitable[WalduckSettings]: ...


@pytest.fixture
async def fresh_topics(services: ServiceEndpoints, tmp_path: Path) -> AsyncIterator[FreshTopics]:
    """Async factory: ``await fresh_topics(partitions=4, pg_dsn=None)`` -> settings with unique, created topics.

    The changes/deltas/dlq topic names and the replication slot name carry a unique suffix; pg_dsn (the given
    one, else the session's superuser DSN) and kafka_bootstrap are filled in; data_dir and storage_root are
    fresh dirs under the test's tmp_path. The topics are deleted at teardown.
    """
    made: list[WalduckSettings] = []

    async def make(partitions: int = 4, pg_dsn: str | None = None) -> WalduckSettings:
        suffix = uuid.uuid4().hex[:10]
        data_dir = tmp_path / f"walduck-{suffix}"
        settings = WalduckSettings(
            data_dir=data_dir,
            storage_root=data_dir / "storage",
            pg_dsn=pg_dsn or services.pg_dsn,
            kafka_bootstrap=services.kafka_bootstrap,
            changes_topic=f"walduck.changes.{suffix}",
            deltas_topic=f"walduck.deltas.{suffix}",
            dlq_topic=f"walduck.dlq.{suffix}",
            topic_partitions=partitions,
            slot_name=f"walduck_{suffix}",
        )
        await ensure_topics(services.kafka_bootstrap, settings)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        with contextlib.suppress(Exception):
            await delete_topics(settings, [settings.changes_topic, settings.deltas_topic, settings.dlq_topic])
