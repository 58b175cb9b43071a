"""The Debezium PostgreSQL connector, run the way platform teams run it: Kafka Connect standalone
(``org.apache.kafka.connect.cli.ConnectStandalone``) from Maven Central jars, for ``walduck bench connector``
(Debezium on the same WAL, same run: issue 18).

Jars: ``io.debezium:debezium-connector-postgres`` + ``org.apache.kafka:connect-runtime``/``connect-json`` and
log4j2 (so Connect logs to a file), resolved once into ``~/.cache/walduck/debezium-<version>/libs``
(:func:`stack.services.maven.resolve_jars`). ``jackson-annotations`` is pinned: Maven's nearest-wins otherwise
mixes jackson 2.21 and 2.19 and Connect fails at start (``NoClassDefFoundError: JsonSerializeAs``).

What this module does not do: it creates no slot and no publication (the caller passes existing ones:
``publication.autocreate.mode=disabled``), and keeps no state between runs (offsets live in the run's dir).
Settings are Debezium's documented ones; :data:`THROUGHPUT` lists the ones changed from Debezium's defaults
for a backlog (its tuning advice: larger batches and queue), everything else is Debezium's default.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from stack.services.errors import ServiceError
from stack.services.kafka import KAFKA_VERSION, LOG4J_VERSION, cache_root, check_java
from stack.services.maven import resolve_jars
from stack.services.proc import LOOPBACK, free_port, tail, terminate

DEBEZIUM_VERSION = "3.6.1.Final"
JACKSON_ANNOTATIONS = "2.21"
HEAP = "-Xmx768m"
STOP_GRACE = 15.0

# changed from Debezium's defaults for a backlog (max.batch.size 2048, max.queue.size 8192) and the producer
# settings walduck's connector uses (zstd, linger 5 ms, 1 MiB batches)
THROUGHPUT = {
    "max.batch.size": "20480",
    "max.queue.size": "81920",
    "poll.interval.ms": "50",
    "producer.override.compression.type": "zstd",
    "producer.override.linger.ms": "5",
    "producer.override.batch.size": "1048576",
}

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>walduck.local</groupId>
  <artifactId>debezium-runtime</artifactId>
  <version>{debezium}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>io.debezium</groupId><artifactId>debezium-connector-postgres</artifactId>
      <version>{debezium}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-json</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>com.fasterxml.jackson.core</groupId><artifactId>jackson-annotations</artifactId>
      <version>{jackson}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
  <build><plugins><plugin><groupId>org.apache.maven.plugins</groupId>
    <artifactId>maven-dependency-plugin</artifactId><version>3.8.1</version></plugin></plugins></build>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
"""


def resolve_debezium_libs(version: str = DEBEZIUM_VERSION) -> Path:
    """The dir holding Kafka Connect's and Debezium's jars, resolved from Maven Central the first time."""
    return resolve_jars(
        cache_root() / f"debezium-{version}",
        _POM.format(debezium=version, kafka=KAFKA_VERSION, jackson=JACKSON_ANNOTATIONS, log4j=LOG4J_VERSION),
        "debezium-connector-postgres-*.jar",
        f"io.debezium:debezium-connector-postgres:{version} with Kafka Connect {KAFKA_VERSION}",
    )


@dataclass
class DebeziumSource:
    """Where Debezium reads: an existing pgoutput slot and publication of one database."""

    host: str
    port: int
    user: str
    dbname: str
    slot: str
    publication: str
    schema: str
    tables: list[str]
    password: str = ""

    @classmethod
    def from_dsn(
        cls, dsn: str, *, slot: str, publication: str, schema: str, tables: list[str]
    ) -> DebeziumSource:
        """The source of the database ``dsn`` names (libpq's defaults where it names no host, port, user or
        password)."""
        info = conninfo_to_dict(dsn)
        return cls(
            host=str(info.get("host") or "127.0.0.1"),
            port=int(info.get("port") or 5432),
            user=str(info.get("user") or "postgres"),
            password=str(info.get("password") or ""),
            dbname=str(info["dbname"]),
            slot=slot,
            publication=publication,
            schema=schema,
            tables=tables,
        )


@dataclass
class LocalDebezium:
    """One Kafka Connect standalone worker running one Debezium PostgreSQL connector."""

    work_dir: Path
    bootstrap: str
    source: DebeziumSource
    topic_prefix: str
    partitions: int = 4
    extra: dict[str, str] = field(default_factory=dict)
    _popen: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.work_dir / "connect.log"

    def topics(self) -> list[str]:
        """Debezium's per-table change topics: ``<prefix>.<schema>.<table>``."""
        return [f"{self.topic_prefix}.{self.source.schema}.{t}" for t in self.source.tables]

    def connector_properties(self) -> dict[str, str]:
        src = self.source
        props = {
            "name": f"{self.topic_prefix}-source",
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "plugin.name": "pgoutput",
            "database.hostname": src.host,
            "database.port": str(src.port),
            "database.user": src.user,
            "database.password": src.password,
            "database.dbname": src.dbname,
            "topic.prefix": self.topic_prefix,
            "slot.name": src.slot,
            "publication.name": src.publication,
            "publication.autocreate.mode": "disabled",
            "snapshot.mode": "no_data",
            "table.include.list": ",".join(f"{src.schema}.{t}" for t in src.tables),
            "topic.creation.default.partitions": str(self.partitions),
            "topic.creation.default.replication.factor": "1",
            **THROUGHPUT,
        }
        props.update(self.extra)
        return props

    def start(self) -> None:
        check_java()
        libs = resolve_debezium_libs()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        worker = {
            "bootstrap.servers": self.bootstrap,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "offset.storage.file.filename": str(self.work_dir / "offsets.dat"),
            "offset.flush.interval.ms": "1000",
            "listeners": f"http://{LOOPBACK}:{free_port()}",
            "connector.client.config.override.policy": "All",
        }
        (self.work_dir / "worker.properties").write_text(_properties(worker))
        (self.work_dir / "connector.properties").write_text(_properties(self.connector_properties()))
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))
        out = open(self.work_dir / "connect.out", "ab")
        self._popen = subprocess.Popen(
            [
                "java",
                HEAP,
                f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
                "-cp",
                f"{libs}/*",
                "org.apache.kafka.connect.cli.ConnectStandalone",
                str(self.work_dir / "worker.properties"),
                str(self.work_dir / "connector.properties"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def check_alive(self) -> None:
        if self._popen is not None and self._popen.poll() is not None:
            raise ServiceError(
                f"Kafka Connect (Debezium) exited with code {self._popen.returncode}; log tail:\n"
                f"{tail(self.log_file, 30)}\n{tail(self.work_dir / 'connect.out', 10)}"
            )

    def errors(self) -> str:
        """ERROR lines Connect logged (a connector task that failed keeps the JVM up)."""
        with contextlib.suppress(OSError):
            return "\n".join(
                line for line in self.log_file.read_text(errors="replace").splitlines() if " ERROR " in line
            )
        return ""

    def stop(self) -> None:
        if self._popen is None:
            return
        terminate(self._popen.pid, STOP_GRACE)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=5)
        self._popen = None  # the slot stays: the caller drops it


def _properties(values: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())
