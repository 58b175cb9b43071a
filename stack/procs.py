"""Run walduck components as child processes (used by ``walduck up``, fault tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stack.envnames import override_env
from walduck.config import WalduckSettings, settings_env


def component_env(settings: WalduckSettings, **extra: str) -> dict[str, str]:
    """Environment carrying the shared settings to a child process (built from the settings model: every field)."""
    # the Kafka security variables come from ``settings`` only (a stale inherited one would fail validation)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WALDUCK_KAFKA_SASL_", "WALDUCK_KAFKA_SSL_"))
    }
    env.update(settings_env(settings))
    # the admin DSN (catalog owner) is never handed to a component; empty role DSNs fall back to WALDUCK_PG_DSN
    env["WALDUCK_PG_ADMIN_DSN"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    # an extra given under a setting's old name replaces an inherited new one (and the other way round)
    return override_env(env, extra)


@dataclass
class Component:
    """One walduck process: ``python -m stack.cli <args>`` with its log in ``log_path``."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no goodbye, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, crash: bool = False) -> None:
        self.kill() if crash else self.stop()
        self.restarts += 1
        self.start()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
