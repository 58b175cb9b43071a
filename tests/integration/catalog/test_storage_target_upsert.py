"""Concurrent writers upserting the default storage target never fail (the failover bench lost a writer to
``UniqueViolation storage_targets_name_key``: ON CONFLICT (id) does not arbitrate the unique name)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from stack.catalog.migrate import apply_migrations
from stack.workload.transactions import upsert_storage_target

pytestmark = pytest.mark.integration


def test_concurrent_upserts_of_one_target_all_succeed(fresh_db: Any) -> None:
    dsn = fresh_db()
    apply_migrations(dsn, "public")
    errors: list[BaseException] = []
    for round_ in range(40):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM storage_targets")
        barrier = threading.Barrier(4)

        def writer(barrier: threading.Barrier = barrier) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                barrier.wait()
                try:
                    upsert_storage_target(conn, "st-default", "timestore-default-local", "/data")
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (round_, errors[:1])
