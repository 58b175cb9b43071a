"""The conftest contract: services that cannot start FAIL the tests (never skip); `long` tests need --long."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stack.services.kafka import LocalKafka
from stack.services.postgres import LocalPostgres
from stack.services.proc import pids_mentioning

REPO = Path(__file__).resolve().parents[3]
THIS = Path(__file__).resolve().relative_to(REPO)


def _pytest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unreachable_services_fail_the_tests_instead_of_skipping() -> None:
    run = _pytest(
        f"{THIS.parent / 'test_session_services.py'}::test_pg_dsn_is_superuser_on_db_postgres",
        "-q",
        env={
            "WALDUCK_TEST_PG_DSN": "postgresql://postgres@127.0.0.1:1/postgres",
            "WALDUCK_TEST_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        },
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "1 error" in out and re.search(r"\d+ skipped", out) is None, out
    assert "could not start" in out and "127.0.0.1:1" in out, out


def test_long_tests_are_deselected_without_the_flag_and_said_so() -> None:
    target = f"{THIS}::test_services_survive_repeated_restarts"
    without = _pytest(target, "--collect-only", "-q")
    assert "1 deselected" in without.stdout, without.stdout
    assert "run them with --long" in without.stdout, without.stdout
    with_flag = _pytest(target, "--collect-only", "-q", "--long")
    assert "test_services_survive_repeated_restarts" in with_flag.stdout, with_flag.stdout
    assert "deselected" not in with_flag.stdout


@pytest.mark.long
def test_services_survive_repeated_restarts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Long variant: five restarts of each service keep their address and leave no process behind."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="walduck-svc-"))
    pg, kafka = LocalPostgres(root / "postgres"), LocalKafka(root / "kafka")
    try:
        dsn, bootstrap = pg.start(), kafka.start()
        for _ in range(5):
            assert pg.restart() == dsn
            assert kafka.restart() == bootstrap
    finally:
        kafka.stop()
        pg.stop()
    assert pids_mentioning(str(root)) == []
    shutil.rmtree(root, ignore_errors=True)
