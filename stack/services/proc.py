"""Process, port and state-file helpers shared by the local services."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stack.services.errors import PortInUse

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when ``port`` can be bound on ``host`` (nothing listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def choose_port(requested: int | None, remembered: int | None, what: str) -> int:
    """The port to listen on: the requested one (must be free), else the remembered one if free, else a new one."""
    if requested is not None:
        if not port_is_free(requested):
            raise PortInUse(
                f"{what}: port {requested} on {LOOPBACK} is already in use; "
                "stop whatever listens there or choose another port (or none, to pick a free one)"
            )
        return requested
    if remembered is not None and port_is_free(remembered):
        return remembered
    return free_port()


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a running (not zombie) process."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def pid_cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' when unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_mentioning(text: str) -> list[int]:
    """Pids of running processes whose command line contains ``text`` (e.g. a data dir)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if text in pid_cmdline(pid) and pid_alive(pid):
                found.append(pid)
    return sorted(found)


def terminate(pid: int, grace: float, poll: float = 0.1) -> bool:
    """SIGTERM ``pid``, wait up to ``grace`` seconds, then SIGKILL. True if it was running."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not pid_alive(pid), grace, poll):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 10.0, poll)
    return True


def wait_for(check: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    """Poll ``check`` until it returns True or ``timeout`` passes; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def read_state(path: Path) -> dict[str, Any]:
    """The JSON state a service keeps in its data dir ({} when there is none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state atomically so another process never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' when missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RecordedState:
    """What a local service remembers in its ``state_file`` (port, pid …) between runs."""

    state_file: Path

    def _state(self) -> dict[str, Any]:
        return read_state(self.state_file)

    @property
    def port(self) -> int | None:
        port = self._state().get("port")
        return int(port) if port else None

    def pid(self) -> int | None:
        """The service's pid if it runs (checked against its command line, so a reused pid is not taken)."""
        raise NotImplementedError

    def is_running(self) -> bool:
        return self.pid() is not None

    def _status(self, service: str, version: str | None, **fields: Any) -> dict[str, Any]:
        """``walduck services status`` of one service: name, version, running, pid, then its own fields."""
        pid = self.pid()
        return {"service": service, "version": version, "running": pid is not None, "pid": pid, **fields}
