"""`walduck --version`, `walduck verify` telling drift (1) from an error (2), and the compactor's one line when
Kafka cannot be reached (issue 17)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _walduck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_version() -> None:
    done = _walduck("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"walduck {version('walduck')}"


def test_verify_exits_2_with_one_line_when_postgres_is_unreachable() -> None:
    done = _walduck("verify", "--pg-dsn", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("walduck verify: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr


def test_compactor_exits_2_with_one_line_when_kafka_is_unreachable() -> None:
    """Before: a rich traceback of KafkaConnectionError, exit 1, and asyncio's "Unclosed AIOKafka…" errors."""
    done = _walduck("compactor", "run", "--kafka", "127.0.0.1:1", "--metrics-port", "0")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    lines = [
        line for line in output.splitlines() if line.startswith("walduck compactor: cannot reach Kafka at")
    ]
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0], output
    assert "Traceback" not in output and "Unclosed" not in output, output
