"""Local PostgreSQL from Debian's packages, set up for logical decoding.

Binaries come from ``/usr/lib/postgresql/<major>/bin`` (the newest major; ``WALDUCK_PG_BIN`` overrides). When none
is installed and we are root, ``apt-get install -y postgresql`` is run (and said so). PostgreSQL refuses to run as
root, so as root the cluster is initialised and run as the ``postgres`` OS user, which owns the data dir.

Layout of ``data_dir``: ``pgdata/`` (the cluster), ``run/`` (unix socket), ``postgres.log``, ``service.json``
(port, pid: lets another process stop it or ask its status). Only 127.0.0.1 is listened on, with trust auth
for loopback and the unix socket only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from stack.services.errors import BinariesMissing, PortInUse, ServiceError
from stack.services.proc import (
    LOOPBACK,
    RecordedState,
    choose_port,
    pid_alive,
    pid_cmdline,
    pids_mentioning,
    terminate,
    wait_for,
    write_state,
)

log = logging.getLogger(__name__)

PG_USER = "postgres"
PG_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT = 60

# Settings the CDC pipeline relies on. synchronous_commit stays at its default (on): a commit the connector
# sees must be durable in the WAL it decodes. fsync/full_page_writes off only trade crash safety of the
# machine (not of PostgreSQL's process) for speed, which is fine for a local throw-away cluster.
SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": f"'{LOOPBACK}'",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "wal_sender_timeout": "'60s'",
    "fsync": "off",
    "full_page_writes": "off",
    "wal_writer_delay": "'10ms'",
    "max_connections": "200",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
}

_HBA = f"""# walduck: trust on loopback and the unix socket only (listen_addresses = {LOOPBACK})
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
host    all          all   ::1/128       trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
host    replication  all   ::1/128       trust
"""


def _major(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.name)) or (0,)


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with pg_ctl (``WALDUCK_PG_BIN`` wins; then PATH)."""
    env = os.environ.get("WALDUCK_PG_BIN")
    if env:
        return Path(env) if (Path(env) / "pg_ctl").exists() else None
    candidates = sorted((d for d in PG_ROOT.glob("*") if (d / "bin" / "pg_ctl").exists()), key=_major)
    if candidates:
        return candidates[-1] / "bin"
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def install_postgres() -> None:
    """``apt-get update && apt-get install -y postgresql`` (as root), saying so on stderr."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BinariesMissing(
            "PostgreSQL binaries not found (looked in /usr/lib/postgresql/*/bin and PATH) and they cannot be "
            "installed from here (needs root and apt-get); install them: `apt-get install -y postgresql`, "
            "or set WALDUCK_PG_BIN to a PostgreSQL bin dir"
        )
    print("walduck: PostgreSQL not found; installing Debian package `postgresql` (apt-get)…", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            raise BinariesMissing(
                f"installing PostgreSQL failed: `{' '.join(cmd)}` exited {run.returncode}:\n"
                f"{(run.stdout + run.stderr)[-2000:]}"
            )
    if find_pg_bin() is None:
        raise BinariesMissing(
            "apt-get installed `postgresql` but no pg_ctl was found under /usr/lib/postgresql"
        )


def dsn_for_database(dsn: str, dbname: str) -> str:
    """The same DSN pointing at another database (URL or key=value form kept)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, parts.fragment))
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


def create_database(dsn: str, dbname: str) -> str:
    """CREATE DATABASE ``dbname`` through the server ``dsn`` points at; its DSN."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return dsn_for_database(dsn, dbname)


def drop_database(dsn: str, dbname: str) -> None:
    """Drop ``dbname``: end its sessions (walsenders too), drop its replication slots, then the database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(5):
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE database = %s AND active_pid IS NOT NULL",
                (dbname,),
            )
            slots = conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,)
            ).fetchall()
            try:
                for (slot,) in slots:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse:
                time.sleep(0.2)  # its walsender is still going away
                continue
            break
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


class LocalPostgres(RecordedState):
    """One local PostgreSQL cluster in ``data_dir`` (run as the ``postgres`` OS user when we are root)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.requested_port = port
        self.pgdata = self.data_dir / "pgdata"
        self.state_file = self.data_dir / "service.json"
        self.log_file = self.data_dir / "postgres.log"
        self.as_root = os.geteuid() == 0

    # -- state (RecordedState: _state(), port, is_running, _status) ----------------------------------------------------------
    @property
    def dsn(self) -> str:
        """Superuser ``postgres``, database ``postgres``, over TCP on 127.0.0.1."""
        port = self.port
        if port is None:
            raise ServiceError(f"PostgreSQL in {self.data_dir} has never been started")
        return f"postgresql://{PG_USER}@{LOOPBACK}:{port}/postgres"

    @property
    def socket_dir(self) -> Path:
        """Inside the data dir unless that path is too long for a unix socket (then a short /tmp dir)."""
        inside = self.data_dir / "run"
        if len(str(inside)) + len("/.s.PGSQL.65535") < 100:
            return inside
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"walduck-pg-{digest}"

    def pid(self) -> int | None:
        """The postmaster's pid if it runs (from postmaster.pid, checked against its command line)."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        if pid_alive(pid) and str(self.pgdata) in pid_cmdline(pid):
            return pid
        return None

    def status(self) -> dict[str, Any]:
        state = self._state()
        return self._status(
            "postgres",
            state.get("version"),
            dsn=self.dsn if state.get("port") else None,
            data_dir=str(self.data_dir),
            log=str(self.log_file),
        )

    # -- running commands as the cluster's owner -------------------------------------------------------
    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.as_root:
            kwargs = {"user": PG_USER, "group": PG_USER, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def _bin(self) -> Path:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            install_postgres()
            bin_dir = find_pg_bin()
        assert bin_dir is not None
        return bin_dir

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the cluster (initdb the first time; reuse it when it already runs); its DSN once it answers."""
        if self.is_running():
            self._wait_connectable(self.dsn, timeout)
            return self.dsn
        bin_dir = self._bin()
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir)
        remembered = self._state().get("port")
        for attempt in range(3):
            port = choose_port(self.requested_port, remembered, "PostgreSQL")
            try:
                self._pg_ctl_start(bin_dir, port, timeout)
                break
            except PortInUse:
                # another process took the port between our check and the bind: pick another one
                if self.requested_port is not None or attempt == 2:
                    raise
                remembered = None
        dsn = self.dsn
        self._wait_connectable(dsn, timeout)
        with psycopg.connect(dsn, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        write_state(
            self.state_file,
            {
                "port": port,
                "pid": self.pid(),
                "bin_dir": str(bin_dir),
                "version": version[0] if version else None,
                "started_at": time.time(),
            },
        )
        return dsn

    def _pg_ctl_start(self, bin_dir: Path, port: int, timeout: float) -> None:
        self._write_config(port)
        write_state(self.state_file, {"port": port, "pid": None, "bin_dir": str(bin_dir)})
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        run = self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(timeout)),
                "-s",
                "start",
            ],
            timeout=timeout + 30,
        )
        if run.returncode != 0:
            with open(self.log_file, errors="replace") as fh:
                fh.seek(log_offset)
                new_log = "\n".join(fh.read().splitlines()[-20:])
            if "could not bind" in new_log or "Address already in use" in new_log:
                raise PortInUse(f"PostgreSQL could not listen on {LOOPBACK}:{port}:\n{new_log}")
            raise ServiceError(
                f"PostgreSQL did not start (pg_ctl exit {run.returncode}): {run.stdout}{run.stderr}\n"
                f"last log lines ({self.log_file}):\n{new_log}"
            )

    def stop(self, timeout: float = 60) -> bool:
        """``pg_ctl stop -m fast`` (then immediate, then SIGKILL); True if it was running. No process is left."""
        pid = self.pid()
        if pid is None:
            self._kill_strays()
            return False
        bin_dir = Path(self._state().get("bin_dir") or self._bin())
        for mode in ("fast", "immediate"):
            run = self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "stop",
                ],
                timeout=timeout + 30,
            )
            if run.returncode == 0 and wait_for(lambda: not pid_alive(pid), 10):
                break
        self._kill_strays()
        state = self._state()
        state["pid"] = None
        write_state(self.state_file, state)
        return True

    def _kill_strays(self) -> None:
        for stray in pids_mentioning(str(self.pgdata)):
            terminate(stray, grace=10)

    def restart(self) -> str:
        self.stop()
        return self.start()

    # -- set-up ----------------------------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        sock = self.socket_dir
        sock.mkdir(parents=True, exist_ok=True)
        if not self.as_root:
            return
        try:
            owner = pwd.getpwnam(PG_USER)
        except KeyError:
            raise BinariesMissing(
                f"running as root, PostgreSQL must run as the `{PG_USER}` OS user, which does not exist; "
                "the Debian package creates it: `apt-get install -y postgresql`"
            ) from None
        for path in (self.data_dir, sock):
            if path.stat().st_uid != owner.pw_uid:
                os.chown(path, owner.pw_uid, owner.pw_gid)
        for sub in self.data_dir.iterdir():
            if sub.name != "service.json" and sub.stat().st_uid != owner.pw_uid:
                _chown_tree(sub, owner.pw_uid, owner.pw_gid)
        # the postgres user must be able to reach the data dir: make parents traversable (search bit only)
        for parent in [*self.data_dir.parents, *sock.parents]:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(parent, mode | stat.S_IXOTH)
                log.info("made %s traversable for the %s user (o+x)", parent, PG_USER)

    def _initdb(self, bin_dir: Path) -> None:
        base = [str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", PG_USER, "-A", "trust", "-E", "UTF8"]
        # C.UTF-8 first; older clusters or images without that locale get --no-locale
        for locale in ("--locale=C.UTF-8", "--no-locale"):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.pgdata)
            run = self._run([*base, locale, "--no-sync"], timeout=300)
            if run.returncode == 0:
                break
        if run.returncode != 0:
            raise ServiceError(f"initdb failed in {self.pgdata}:\n{run.stdout}{run.stderr}")
        (self.pgdata / "pg_hba.conf").write_text(_HBA)
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write("\n# walduck settings (rewritten at each start)\ninclude_if_exists = 'walduck.conf'\n")

    def _write_config(self, port: int) -> None:
        settings = {**SERVER_SETTINGS, "port": str(port), "unix_socket_directories": f"'{self.socket_dir}'"}
        path = self.pgdata / "walduck.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        if self.as_root:
            owner = pwd.getpwnam(PG_USER)
            for file in (path, self.pgdata / "pg_hba.conf"):
                os.chown(file, owner.pw_uid, owner.pw_gid)

    def _wait_connectable(self, dsn: str, timeout: float) -> None:
        last: Exception | None = None

        def connectable() -> bool:
            nonlocal last
            try:
                with psycopg.connect(dsn, connect_timeout=3):
                    return True
            except psycopg.OperationalError as exc:
                last = exc
                return False

        if not wait_for(connectable, timeout, 0.1):
            raise ServiceError(f"PostgreSQL at {dsn} does not accept connections: {last}")


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
