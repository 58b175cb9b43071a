"""Java runtimes from Maven Central: a generated ``pom.xml`` whose runtime dependencies ``mvn`` copies into a
cache dir once (Kafka's broker, Kafka Connect + Debezium). One resolver, so the lock, the completion marker
and the error text are the same for every JVM service."""

from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
import time
from pathlib import Path

from stack.services.errors import BinariesMissing, ServiceError

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT = 900.0


def resolve_jars(base: Path, pom: str, marker: str, what: str, before: list[str] | None = None) -> Path:
    """``base/libs`` holding the jars of ``pom``'s runtime scope, resolved the first time (``marker``: a glob
    that matches once the main artifact is there). Safe to call from several processes at once (a file lock
    serialises the download). ``before``: globs under ``base`` removed before a fresh resolve."""
    libs = base / "libs"
    done = base / ".complete"
    if done.exists() and any(libs.glob(marker)):
        return libs
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and any(libs.glob(marker)):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BinariesMissing(
                f"{what} is run from its Maven Central jars, resolved with Maven, but `mvn` is not on PATH; "
                "install it, e.g. `apt-get install -y maven`"
            )
        pom_file = base / "pom.xml"
        pom_file.write_text(pom)
        if libs.exists():
            shutil.rmtree(libs)
        for pattern in before or []:
            for stale in base.glob(pattern):
                stale.unlink()
        started = time.monotonic()
        log.warning("resolving %s jars from Maven Central into %s (once)…", what, libs)
        run = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_file),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            capture_output=True,
            text=True,
            timeout=RESOLVE_TIMEOUT,
        )
        if run.returncode != 0 or not any(libs.glob(marker)):
            raise ServiceError(
                f"resolving {what} with Maven failed (exit {run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}"
            )
        done.write_text(f"{time.monotonic() - started:.1f}s\n")
        log.warning("%s jars resolved in %.1f s", what, time.monotonic() - started)
    return libs
