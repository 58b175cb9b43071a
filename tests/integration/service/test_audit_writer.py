"""The audit writer stops cleanly while a write is in flight (CI: teardown of test_read_json_csv_table raised
psycopg's pipeline AssertionError: stop() cancelled executemany half-way) and loses no row."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from integration.service.test_service_contract import seed_catalog

from sinks.service.audit import AuditEntry, AuditWriter

pytestmark = pytest.mark.integration


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*) FROM timestore.dataset_access_audit WHERE actor_id = 'stopper'"
        ).fetchone()[0]


async def test_stop_during_a_write_waits_for_it_and_loses_nothing(fresh_db: Any, tmp_path: Path) -> None:
    dsn = fresh_db()
    storage = tmp_path / "storage"
    storage.mkdir()
    seed_catalog(dsn, storage)
    for attempt in range(5):
        writer = AuditWriter(dsn, "timestore", batch_size=5_000, flush_interval_s=0.0)
        entries = 3_000
        for i in range(entries):
            writer.record(AuditEntry(None, f"ds-{i}", "stopper", ["sql:read"], "sql.read", True))
        writer.start()
        deadline = asyncio.get_running_loop().time() + 10
        while writer._queue.qsize() == entries:  # the writer took the batch: it is being written now
            assert asyncio.get_running_loop().time() < deadline, "the writer never started writing"
            await asyncio.sleep(0)
        await asyncio.sleep(0.005 * attempt)  # land the stop at different points of the write
        await writer.stop()  # raised AssertionError / CancelledError before
        assert _count(dsn) == entries * (attempt + 1)
