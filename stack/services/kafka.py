"""Local Apache Kafka 4.x: one KRaft node (broker + controller) run from its Maven Central artifacts.

Over 500 lines: one local broker's whole lifecycle (Maven jars, KRaft format, config, SASL/SSL listeners, state).

The jars (``org.apache.kafka:kafka_2.13`` and its runtime dependencies, plus the slf4j → log4j2 binding so the
broker logs to a file) are resolved once with Maven into a cache dir (default
``~/.cache/walduck/kafka-<version>/libs``; ``WALDUCK_CACHE_DIR`` moves ``~/.cache/walduck``). The node is then
``java -cp 'libs/*' kafka.Kafka server.properties`` with a small heap, listening on 127.0.0.1 only.
Its ports and pid are kept in ``<data_dir>/service.json`` so another process can stop it or ask its status.

The client listener is PLAINTEXT by default; ``LocalKafka(..., protocol=SASL_PLAINTEXT | SSL | SASL_SSL)`` runs
it secured instead (stack/services/kafka_tls.py makes the throwaway CA and broker certificate, SCRAM-SHA-512
credentials are written into the storage at format time); :meth:`LocalKafka.client_settings` tells clients how
to connect. Only the controller listener (loopback, used by the node itself) stays PLAINTEXT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stack.services.errors import BinariesMissing, ServiceError
from stack.services.maven import resolve_jars
from stack.services.proc import (
    LOOPBACK,
    RecordedState,
    choose_port,
    pid_alive,
    pid_cmdline,
    pids_mentioning,
    tail,
    terminate,
    write_state,
)
from walduck.config import KafkaSaslMechanism, KafkaSecurityProtocol, WalduckSettings
from walduck.kafka_security import SASL_PROTOCOLS, TLS_PROTOCOLS

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
# slf4j binding matching the slf4j-api 1.7.x Kafka 4.1 depends on (log4j-core/-api come with Kafka)
LOG4J_VERSION = "2.24.3"
MIN_JAVA = 17
HEAP = "-Xmx512m"
START_TIMEOUT = 90.0
# marker in <data_dir>/security: the storage was formatted with the SCRAM user (--add-scram)
SCRAM_FORMATTED = "scram-formatted"
STOP_GRACE = 20.0

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>walduck.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
"""

_LOG4J2 = """status = warn
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def cache_root() -> Path:
    """Where downloaded runtimes are cached (``WALDUCK_CACHE_DIR`` or ``~/.cache/walduck``)."""
    env = os.environ.get("WALDUCK_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "walduck"


def java_major_version(java: str = "java") -> int:
    """The major version of ``java`` (e.g. 17); BinariesMissing when it is not installed."""
    exe = shutil.which(java)
    if exe is None:
        raise BinariesMissing(
            f"Kafka needs Java {MIN_JAVA}+ but `{java}` is not on PATH; "
            "install it, e.g. `apt-get install -y openjdk-17-jre-headless`"
        )
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
    return parse_java_version(out.stderr + out.stdout)


def parse_java_version(text: str) -> int:
    """Major version from ``java -version`` output ('1.8.0_x' → 8, '17.0.15' → 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise ServiceError(f"cannot read the Java version from: {text.strip()[:200]!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def class_archive(libs: Path) -> Path | None:
    """The AppCDS archive of Kafka's classes for this java + these jars (``WALDUCK_KAFKA_CDS=0`` disables it).

    The first start dumps it at exit (``-XX:ArchiveClassesAtExit``); later starts map it, which roughly halves
    the JVM's start-up. A stale or broken archive is ignored by the JVM (``-Xshare:auto``).
    """
    if os.environ.get("WALDUCK_KAFKA_CDS", "1") == "0":
        return None
    java = shutil.which("java")
    if java is None:
        return None
    real = os.path.realpath(java)
    st = os.stat(real)
    key = hashlib.sha1(f"{real}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()[:12]
    return libs.parent / f"classes-{key}.jsa"


def check_java() -> None:
    major = java_major_version()
    if major < MIN_JAVA:
        raise BinariesMissing(
            f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, found Java {major}; "
            "install a newer one, e.g. `apt-get install -y openjdk-17-jre-headless`"
        )


def resolve_kafka_libs(cache_dir: Path | None = None, version: str = KAFKA_VERSION) -> Path:
    """The dir holding Kafka's jars, resolving them from Maven Central with ``mvn`` the first time.

    Safe to call from several processes at once (a file lock serialises the download).
    """
    return resolve_jars(
        cache_dir or cache_root() / f"kafka-{version}",
        _POM.format(kafka=version, scala=SCALA_VERSION, log4j=LOG4J_VERSION),
        "kafka_*.jar",
        f"org.apache.kafka:kafka_{SCALA_VERSION}:{version}",
        before=["classes-*.jsa*"],
    )


class LocalKafka(RecordedState):
    """One local Kafka 4.x KRaft node (broker + controller) whose data lives in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        protocol: KafkaSecurityProtocol | str | None = None,
    ) -> None:
        """``protocol`` of the client listener; None: the one this data dir last ran with, else PLAINTEXT."""
        self.data_dir = Path(data_dir).resolve()
        self.security_dir = self.data_dir / "security"
        self.requested_port = port
        self.requested_controller_port = controller_port
        self.state_file = self.data_dir / "service.json"
        recorded = self._state().get("security_protocol") or KafkaSecurityProtocol.PLAINTEXT
        self.protocol = KafkaSecurityProtocol(protocol or recorded)
        self.log_file = self.data_dir / "logs" / "server.log"
        self.stdout_file = self.data_dir / "logs" / "kafka.out"
        self.properties_file = self.data_dir / "server.properties"
        self.log_dirs = self.data_dir / "kraft-combined-logs"
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- state (RecordedState: _state(), port, is_running, _status) ----------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        port = self.port
        if port is None:
            raise ServiceError(f"Kafka in {self.data_dir} has never been started")
        return f"{LOOPBACK}:{port}"

    def client_security(self) -> dict[str, Any]:
        """The ``WalduckSettings`` security fields of a client of this node (the password as a file)."""
        security: dict[str, Any] = {"kafka_security_protocol": self.protocol}
        if self.protocol in SASL_PROTOCOLS:
            security |= {
                "kafka_sasl_mechanism": KafkaSaslMechanism.SCRAM_SHA_512,
                "kafka_sasl_username": self.credentials()["username"],
                "kafka_sasl_password_file": self.security_dir / "password",
            }
        if self.protocol in TLS_PROTOCOLS:
            security["kafka_ssl_cafile"] = self.security_dir / "ca.pem"
        return security

    def client_settings(self, base: WalduckSettings | None = None, **overrides: Any) -> WalduckSettings:
        """Settings (``base``'s, with ``overrides``) whose Kafka bootstrap and security reach this node."""
        security = self.client_security()
        if "kafka_sasl_password" in overrides:
            security.pop("kafka_sasl_password_file", None)
        values = (base or WalduckSettings()).model_dump()
        values |= {"kafka_bootstrap": overrides.pop("kafka_bootstrap", None) or self.bootstrap, **security}
        values |= overrides
        return WalduckSettings(**values)

    def credentials(self) -> dict[str, str]:
        """The SCRAM user of this node (``security/credentials.json``, made once per data dir)."""
        path = self.security_dir / "credentials.json"
        password_file = (
            self.security_dir / "password"
        )  # the same password, as WALDUCK_KAFKA_SASL_PASSWORD_FILE
        if not path.exists():
            self.security_dir.mkdir(parents=True, exist_ok=True)
            _write_private(path, json.dumps({"username": "walduck", "password": secrets.token_urlsafe(24)}))
        creds = json.loads(path.read_text())
        if not password_file.exists():
            _write_private(password_file, creds["password"])
        return creds

    def pid(self) -> int | None:
        """The broker's pid (from the state file, checked against its command line)."""
        pid = self._state().get("pid")
        if pid and pid_alive(int(pid)) and str(self.properties_file) in pid_cmdline(int(pid)):
            return int(pid)
        return None

    def status(self) -> dict[str, Any]:
        state = self._state()
        return self._status(
            "kafka",
            KAFKA_VERSION,
            bootstrap=f"{LOOPBACK}:{state['port']}" if state.get("port") else None,
            security_protocol=self.protocol.value,
            controller_port=state.get("controller_port"),
            data_dir=str(self.data_dir),
            log=str(self.log_file),
        )

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the node (or reuse it when it already runs); the bootstrap address once clients can use it."""
        if self.is_running():
            running = self._state().get("security_protocol") or KafkaSecurityProtocol.PLAINTEXT
            if running != self.protocol:
                raise ServiceError(
                    f"Kafka in {self.data_dir} already runs with a {running} listener, not {self.protocol}; "
                    "stop it first (`walduck services stop`)"
                )
            return self.bootstrap
        check_java()
        libs = resolve_kafka_libs()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        state = self._state()
        remembered = (state.get("port"), state.get("controller_port"))
        for attempt in range(3):
            port = choose_port(self.requested_port, remembered[0], "Kafka broker")
            cport = choose_port(self.requested_controller_port, remembered[1], "Kafka controller")
            if cport == port:
                cport = choose_port(None, None, "Kafka controller")
            self._write_config(port, cport)
            if not (self.log_dirs / "meta.properties").exists():
                self._format(libs, state.get("cluster_id") or _cluster_id())
            elif self.protocol in SASL_PROTOCOLS and not (self.security_dir / SCRAM_FORMATTED).exists():
                raise ServiceError(
                    f"Kafka storage in {self.log_dirs} was formatted without the SCRAM user a SASL listener "
                    f"needs (before walduck wrote it at format time); remove {self.data_dir} to start afresh"
                )
            bootstrap = f"{LOOPBACK}:{port}"
            self._launch(libs, port, cport)
            try:
                self._wait_ready(bootstrap, timeout)
                return bootstrap
            except ServiceError as exc:
                self.stop()
                ports_chosen_here = self.requested_port is None and self.requested_controller_port is None
                if not (ports_chosen_here and "BindException" in str(exc)) or attempt == 2:
                    raise
                remembered = (None, None)  # a port was taken between our check and the bind
        raise AssertionError("unreachable")

    def _launch(self, libs: Path, port: int, cport: int) -> None:
        archive = class_archive(libs)
        cds: list[str] = []
        dump: Path | None = None
        if archive is not None:
            if archive.exists():
                cds = [f"-XX:SharedArchiveFile={archive}"]
            else:
                dump = archive.with_name(f"{archive.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
                cds = [f"-XX:ArchiveClassesAtExit={dump}"]
            cds.append("-Xlog:cds=off,cds+dynamic=off")
        cmd = [
            shutil.which("java") or "java",
            *cds,
            HEAP,
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.properties_file),
        ]
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.stdout_file, "ab") as out:
            self._popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        write_state(
            self.state_file,
            {
                "pid": self._popen.pid,
                "port": port,
                "controller_port": cport,
                "cluster_id": _read_cluster_id(self.log_dirs),
                "version": KAFKA_VERSION,
                "security_protocol": self.protocol.value,
                "started_at": time.time(),
                "cds_dump": str(dump) if dump else None,
            },
        )

    def _new_log(self, lines: int = 30) -> str:
        """What the broker logged since the last launch."""
        try:
            with open(self.log_file, errors="replace") as fh:
                fh.seek(self._log_offset)
                return "\n".join(fh.read().splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self, bootstrap: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                raise ServiceError(
                    f"Kafka exited with code {self._popen.returncode} while starting; "
                    f"last log lines ({self.log_file}):\n{self._new_log()}\n{tail(self.stdout_file, 10)}"
                )
            try:
                with quiet_client_logs():
                    ok = asyncio.run(_metadata_ok(self.client_settings(kafka_bootstrap=bootstrap)))
                if ok:
                    return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise ServiceError(
            f"Kafka at {bootstrap} did not answer a metadata request within {timeout:.0f}s ({last_error}); "
            f"last log lines ({self.log_file}):\n{self._new_log()}"
        )

    def stop(self, grace: float = STOP_GRACE) -> bool:
        """SIGTERM the node, wait, then SIGKILL; True if it was running. Leaves no JVM of this data dir."""
        was_running = False
        pid = self.pid()
        if pid is not None:
            was_running = terminate(pid, grace)
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=5)
            self._popen = None
        # a JVM of this data dir started some other way (or whose state file was lost)
        for stray in pids_mentioning(str(self.properties_file)):
            was_running = terminate(stray, grace) or was_running
        state = self._state()
        if state:
            _adopt_class_archive(state.pop("cds_dump", None))
            state["pid"] = None
            write_state(self.state_file, state)
        return was_running

    def restart(self) -> str:
        """Stop and start again with the same data (topics and offsets are kept)."""
        self.stop()
        return self.start()

    # -- set-up ----------------------------------------------------------------------------------------
    def _write_config(self, port: int, cport: int) -> None:
        name = self.protocol.value  # the client listener is named after its protocol
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{cport}",
            "listeners": f"{name}://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{cport}",
            "advertised.listeners": f"{name}://{LOOPBACK}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": name,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{name}:{name}",
            **self._security_props(),
            "log.dirs": str(self.log_dirs),
            "num.partitions": "4",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.retention.check.interval.ms": "300000",
        }
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))

    def _security_props(self) -> dict[str, str]:
        """SASL (SCRAM-SHA-512, the node logs in to itself as the same user) and TLS listener settings."""
        props: dict[str, str] = {}
        if self.protocol in SASL_PROTOCOLS:
            creds = self.credentials()
            mech = KafkaSaslMechanism.SCRAM_SHA_512.value
            props |= {
                "sasl.enabled.mechanisms": mech,
                "sasl.mechanism.inter.broker.protocol": mech,
                f"listener.name.{self.protocol.value.lower()}.{mech.lower()}.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{creds["username"]}" password="{creds["password"]}";'
                ),
            }
        if self.protocol in TLS_PROTOCOLS:
            from stack.services.kafka_tls import ensure_broker_keystores

            stores = ensure_broker_keystores(self.security_dir)
            props |= {
                "ssl.keystore.type": "PKCS12",
                "ssl.keystore.location": str(stores.keystore),
                "ssl.keystore.password": stores.password,
                "ssl.key.password": stores.password,
                "ssl.truststore.type": "PKCS12",
                "ssl.truststore.location": str(stores.truststore),
                "ssl.truststore.password": stores.password,
                "ssl.client.auth": "none",
            }
        return props

    def _format(self, libs: Path, cluster_id: str) -> None:
        # the SCRAM user is written into the metadata at format time (KRaft: no ZooKeeper to add it later);
        # always, so a data dir formatted for PLAINTEXT can be restarted with a SASL listener
        creds = self.credentials()
        scram = f"{KafkaSaslMechanism.SCRAM_SHA_512.value}=[name={creds['username']},password={creds['password']}]"
        run = subprocess.run(
            [
                shutil.which("java") or "java",
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.properties_file),
                "--add-scram",
                scram,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if run.returncode != 0:
            raise ServiceError(
                f"formatting Kafka storage in {self.log_dirs} failed:\n{run.stdout}{run.stderr}"
            )
        (self.security_dir / SCRAM_FORMATTED).write_text(f"{creds['username']}\n")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def _adopt_class_archive(dump: str | None) -> None:
    """Move a class archive the stopped JVM dumped at exit to its final name (first one wins)."""
    if not dump:
        return
    path = Path(dump)
    final = path.parent / path.name.split(".jsa.", 1)[0]
    final = final.with_name(final.name + ".jsa")
    try:
        if path.exists() and path.stat().st_size > 0 and not final.exists():
            os.replace(path, final)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not keep the Kafka class archive %s: %s", path, exc)


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what ``random-uuid`` prints)."""
    import base64

    while True:  # like Kafka's Uuid.randomUuid: never starting with '-' (it would read as a CLI option)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _read_cluster_id(log_dirs: Path) -> str | None:
    try:
        for line in (log_dirs / "meta.properties").read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    except OSError:
        return None
    return None


@contextlib.contextmanager
def quiet_client_logs() -> Iterator[None]:
    """Silence aiokafka's connection-refused noise while polling a broker that is still starting."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _metadata_ok(settings: WalduckSettings) -> bool:
    """True when a real client (with the settings' security) connects and the broker lists itself."""
    from aiokafka.admin import AIOKafkaAdminClient

    from walduck.kafka_security import client_kwargs, start_client

    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=3000)
    try:
        await asyncio.wait_for(start_client(admin, settings), timeout=5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout=5)
        return bool(cluster.get("brokers"))
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
