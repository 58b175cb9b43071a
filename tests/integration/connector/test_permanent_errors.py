"""A permanent error (issue 17: an unknown role or database, a role without REPLICATION) stops the connector
with exit code 2 and one clear line, instead of being retried forever while the pod looks Running; a
transient one (PostgreSQL restarting, Kafka away) is still retried (tests/faults/test_infra_restarts.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from connectors.setup import setup
from stack.catalog.migrate import apply_migrations

from .connector_helpers import connector_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _run(settings, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connectors", "run", "--log-level", "WARNING"],
        env=connector_env(settings, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("case", ["unknown_role", "missing_database", "no_replication_attribute"])
async def test_a_permanent_error_exits_2_with_one_line(case: str, fresh_db, fresh_topics) -> None:
    dsn = fresh_db()
    apply_migrations(dsn)
    settings = await fresh_topics(pg_dsn=dsn)
    setup(settings, create_slot=False)
    info = conninfo_to_dict(dsn)
    expected = {
        "unknown_role": 'role "walduck_nobody" does not exist',
        "missing_database": 'database "walduck_nowhere" does not exist',
        "no_replication_attribute": "must be superuser or replication role to start walsender",
    }[case]
    if case == "unknown_role":
        settings.pg_dsn = make_conninfo(**{**info, "user": "walduck_nobody"})
    elif case == "missing_database":
        settings.pg_dsn = make_conninfo(**{**info, "dbname": "walduck_nowhere"})
    else:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS walduck_norepl")
            conn.execute("CREATE ROLE walduck_norepl LOGIN NOREPLICATION")
        settings.pg_dsn = make_conninfo(**{**info, "user": "walduck_norepl"})
    started = time.monotonic()
    done = _run(settings)
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    lines = [line for line in output.splitlines() if expected in line]
    assert len(lines) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    print(f"[permanent] {case}: exit 2 after {elapsed:.1f} s: {lines[0]}")
