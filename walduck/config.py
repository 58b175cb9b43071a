"""Shared configuration (pydantic-settings, ``WALDUCK_`` environment variables).

Component-specific knobs live next to their component, each under its own prefix (``connectors/settings.py``
``WALDUCK_CONNECTOR_``, ``pipeline/settings.py`` ``WALDUCK_COMPACTOR_``, ``sinks/settings.py``
``WALDUCK_CONTEXT_``, ``sinks/service/settings.py`` ``WALDUCK_QUERY_``, ``sinks/service/jobs/settings.py``
``WALDUCK_JOBS_``; :func:`component_config`, which keeps the older ``WALDUCK_<FIELD>`` names as aliases); this
module holds what several components must agree on: where the services are, the catalog schema, topic names and
the data directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterable, Mapping
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, AliasGenerator, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


LEGACY_PREFIX = "WALDUCK_"


@dataclasses.dataclass(frozen=True)
class ComponentAliases:
    """The variables that set a component's field (a pydantic ``alias_generator``): ``<prefix><FIELD>`` (or
    ``names[field]``; a field already named after the component, e.g. ``context_path`` of ``WALDUCK_CONTEXT_``,
    is ``<legacy_prefix><FIELD>``, not ``WALDUCK_CONTEXT_CONTEXT_PATH``) first, then the name it had when every
    component shared ``WALDUCK_`` (``<legacy_prefix><FIELD>``, or ``legacy[field]``; ``None``: it never had another), then ``also[field]``
    (e.g. Timestore's own names). The first one set wins, so a new name beats an old one. A field declaring its
    own ``validation_alias`` keeps it (pydantic's alias priority)."""

    prefix: str
    legacy_prefix: str = LEGACY_PREFIX
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    legacy: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    also: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __call__(self, name: str) -> AliasChoices:
        own = self.prefix[len(self.legacy_prefix) :].lower()  # "context_" of WALDUCK_CONTEXT_
        prefix = self.legacy_prefix if own and name.startswith(own) else self.prefix
        primary = self.names.get(name, f"{prefix}{name}".upper())
        old = self.legacy.get(name, f"{self.legacy_prefix}{name}".upper())
        choices = [primary, *([old] if old else []), *self.also.get(name, ())]
        return AliasChoices(*dict.fromkeys(choices))  # in order, without repeats

    def fields(self) -> set[str]:
        """The field names the overrides mention (a test checks each is a field: a typo would be ignored)."""
        return set(self.names) | set(self.legacy) | set(self.also)


def component_config(
    prefix: str,
    *,
    names: Mapping[str, str] | None = None,
    legacy: Mapping[str, str | None] | None = None,
    also: Mapping[str, tuple[str, ...]] | None = None,
    legacy_prefix: str = LEGACY_PREFIX,
) -> SettingsConfigDict:
    """The ``model_config`` of a component's settings class: its own prefix, every older name still accepted
    (:class:`ComponentAliases`), other components' variables ignored (``extra="ignore"``: one environment
    carries them all; :func:`unknown_variables` names the misspelt ones), fields settable by name in code."""
    aliases = ComponentAliases(prefix, legacy_prefix, dict(names or {}), dict(legacy or {}), dict(also or {}))
    return SettingsConfigDict(
        env_prefix=prefix,
        extra="ignore",
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=aliases),
    )


def component_aliases(settings_class: type[BaseSettings]) -> ComponentAliases | None:
    """The :class:`ComponentAliases` of a class configured by :func:`component_config` (else ``None``)."""
    generator = settings_class.model_config.get("alias_generator")
    found = getattr(generator, "validation_alias", None)
    return found if isinstance(found, ComponentAliases) else None


class ContextMode(StrEnum):
    INCREMENTAL = "incremental"
    FULL_SCAN = "full-scan"


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class KafkaSaslMechanism(StrEnum):
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    PLAIN = "PLAIN"


class WalduckSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALDUCK_", extra="ignore")

    # where everything local lives (PostgreSQL data dir, Kafka logs, DuckDB contexts, Parquet files)
    data_dir: Path = Path(".walduck")
    # external services; empty = the local ones `walduck services start` runs
    # PostgreSQL, one DSN per role (docs/security.md "Roles"; created by `walduck catalog roles`):
    # pg_dsn is the connector's (walduck_connector: REPLICATION + SELECT on the published tables), and the
    # fallback of the others when they are unset (a single-DSN deployment keeps working)
    pg_dsn: str = ""
    # setup only (migrations, `connector setup`, `catalog roles`): the catalog owner or a superuser
    pg_admin_dsn: str = ""
    # the query service's catalog reads (walduck_reader)
    pg_read_dsn: str = ""
    # the query service's /sql/exec (walduck_exec; refused on a privileged role unless allowed)
    pg_exec_dsn: str = ""
    kafka_bootstrap: str = ""
    # Kafka security (every client: walduck/kafka_security.py; docs/security.md "Kafka")
    kafka_security_protocol: KafkaSecurityProtocol = KafkaSecurityProtocol.PLAINTEXT
    kafka_sasl_mechanism: KafkaSaslMechanism | None = None
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr | None = None
    # a file holding the password (a mounted k8s Secret key); read at each client start, so a rotated
    # Secret is picked up by the next connection
    kafka_sasl_password_file: Path | None = None
    # PEM files: the CA that signed the brokers' certificates (empty: the system trust store), and the
    # client certificate + key for mutual TLS (Strimzi `tls` authentication)
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    # the Timestore catalog schema (TIMESTORE_PG_SCHEMA in Timestore)
    catalog_schema: str = "timestore"
    # where local storage targets keep Parquet files (the workload writes here)
    storage_root: Path = Path(".walduck/storage")

    # Kafka topics (one place for their names)
    changes_topic: str = "walduck.changes"
    deltas_topic: str = "walduck.deltas"
    dlq_topic: str = "walduck.dlq"
    # the compactor's state snapshots (compacted, co-partitioned with the changes topic; docs/compactor.md
    # "State snapshots"). Empty: named after the deltas topic, ".deltas" -> ".compactor-state"
    compactor_state_topic: str = ""
    topic_partitions: int = 4
    # what `walduck kafka ensure-topics` (and the local stack) creates topics with: replication factor (3 on a
    # production cluster; 1 on a single local broker), min.insync.replicas (unset: the broker's default) and
    # the DLQ's retention
    topic_replication_factor: int = 1
    topic_min_insync_replicas: int | None = None
    dlq_retention_ms: int = 7 * 24 * 3600 * 1000
    # retention of the changes and deltas topics (-1 = keep forever): 7 days by default, so history and the
    # heartbeats in it stop piling up. Nothing needs history older than what a context can boot from: a new,
    # wiped or truncated context shard is built from PostgreSQL (a snapshot) or seeded from a context snapshot and
    # follows the deltas from the offsets recorded with it (sinks/context/build.py, context_snapshot.py), so the
    # retention only has to cover the longest outage a running replica should ride out by replaying; the compactor
    # needs its deltas after its newest state snapshot (at most 1 h old) and the changes it has not processed
    # (docs/operations.md "Retention")
    changes_retention_ms: int = 7 * 24 * 3600 * 1000
    changes_retention_bytes: int = -1
    deltas_retention_ms: int = 7 * 24 * 3600 * 1000
    deltas_retention_bytes: int = -1
    # largest record on the changes/deltas topics (topic max.message.bytes, producer max_request_size,
    # consumer max_partition_fetch_bytes): a delta of a few thousand partition entries is a few MB
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    # logical decoding
    slot_name: str = "walduck"
    publication_name: str = "walduck_catalog"

    # contexts
    context_mode: ContextMode = ContextMode.INCREMENTAL

    # address the connector's and the compactor's /metrics servers bind; 127.0.0.1 keeps them local, k8s sets
    # 0.0.0.0 so Prometheus (PodMonitor) can scrape each pod (the query service serves /metrics on its own port)
    metrics_host: str = "127.0.0.1"

    def state_topic(self) -> str:
        """The compactor's state topic: ``compactor_state_topic``, or ``<prefix>.compactor-state`` for a deltas
        topic ``<prefix>.deltas`` (``<deltas topic>.compactor-state`` for any other name)."""
        if self.compactor_state_topic:
            return self.compactor_state_topic
        prefix = self.deltas_topic.removesuffix(".deltas")
        return (
            f"{prefix}.compactor-state"
            if prefix != self.deltas_topic
            else f"{self.deltas_topic}.compactor-state"
        )

    def admin_dsn(self) -> str:
        return self.pg_admin_dsn or self.pg_dsn

    def read_dsn(self) -> str:
        return self.pg_read_dsn or self.pg_dsn

    def exec_dsn(self) -> str:
        return self.pg_exec_dsn or self.pg_dsn

    @model_validator(mode="after")
    def _check_kafka_security(self) -> WalduckSettings:
        problems = kafka_security_problems(self)
        if problems:
            raise ValueError("invalid Kafka security settings: " + "; ".join(problems))
        return self

    def resolved_storage_root(self) -> Path:
        return self.storage_root.resolve()


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogSettings(BaseSettings):
    """How every component logs (walduck/logs.py); ``--log-level`` / ``--log-format`` override them."""

    model_config = SettingsConfigDict(env_prefix="WALDUCK_", extra="ignore")

    log_level: LogLevel = LogLevel.INFO
    # text: one line ``ts level component logger: msg``; json: one object per line with the same fields
    log_format: LogFormat = LogFormat.TEXT

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()


def kafka_security_problems(s: WalduckSettings) -> list[str]:
    """What is inconsistent in the ``WALDUCK_KAFKA_*`` security settings (empty: nothing)."""
    problems: list[str] = []
    protocol = s.kafka_security_protocol
    sasl = protocol in (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)
    tls = protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)
    has_password = s.kafka_sasl_password is not None or s.kafka_sasl_password_file is not None
    if sasl:
        if s.kafka_sasl_mechanism is None:
            problems.append(
                f"WALDUCK_KAFKA_SECURITY_PROTOCOL={protocol} needs WALDUCK_KAFKA_SASL_MECHANISM "
                f"({', '.join(m.value for m in KafkaSaslMechanism)})"
            )
        if not s.kafka_sasl_username:
            problems.append(f"WALDUCK_KAFKA_SECURITY_PROTOCOL={protocol} needs WALDUCK_KAFKA_SASL_USERNAME")
        if not has_password:
            problems.append(
                f"WALDUCK_KAFKA_SECURITY_PROTOCOL={protocol} needs WALDUCK_KAFKA_SASL_PASSWORD "
                "or WALDUCK_KAFKA_SASL_PASSWORD_FILE"
            )
        if s.kafka_sasl_password is not None and s.kafka_sasl_password_file is not None:
            problems.append("set WALDUCK_KAFKA_SASL_PASSWORD or WALDUCK_KAFKA_SASL_PASSWORD_FILE, not both")
    elif s.kafka_sasl_mechanism is not None or s.kafka_sasl_username or has_password:
        problems.append(
            f"SASL settings are given but WALDUCK_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL "
            "(SASL_PLAINTEXT or SASL_SSL)"
        )
    tls_files = {
        "WALDUCK_KAFKA_SSL_CAFILE": s.kafka_ssl_cafile,
        "WALDUCK_KAFKA_SSL_CERTFILE": s.kafka_ssl_certfile,
        "WALDUCK_KAFKA_SSL_KEYFILE": s.kafka_ssl_keyfile,
    }
    if not tls and any(tls_files.values()):
        problems.append(
            f"TLS files are given but WALDUCK_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS (SSL or SASL_SSL)"
        )
    if s.kafka_ssl_keyfile is not None and s.kafka_ssl_certfile is None:
        problems.append("WALDUCK_KAFKA_SSL_KEYFILE needs WALDUCK_KAFKA_SSL_CERTFILE")
    files = {**tls_files, "WALDUCK_KAFKA_SASL_PASSWORD_FILE": s.kafka_sasl_password_file}
    for name, path in files.items():
        if path is not None and not path.is_file():
            problems.append(f"{name}={path}: no such file")
    return problems


def load_settings(**overrides: object) -> WalduckSettings:
    """Settings from the environment, with explicit (CLI flag) overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return WalduckSettings(**clean)


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict | tuple | set):
        return json.dumps(list(value) if isinstance(value, set | tuple) else value)
    return str(value)


def env_names(settings_class: type[BaseSettings]) -> dict[str, list[str]]:
    """Field name -> the environment variables that set it, upper case, the primary one first (the prefixed
    field name, or the first of its aliases)."""
    prefix = settings_class.model_config.get("env_prefix", "")
    names: dict[str, list[str]] = {}
    for name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            found = [alias]
        elif isinstance(alias, AliasChoices):
            found = [c for c in alias.choices if isinstance(c, str)]
        else:
            found = [f"{prefix}{name}"]
        names[name] = [n.upper() for n in found]
    return names


def settings_env(settings: BaseSettings) -> dict[str, str]:
    """The environment that recreates ``settings`` in a child process, built from the model (every field that
    is not ``None``, under its primary variable), so a hand-written copy can never forget a field."""
    names = env_names(type(settings))
    return {
        names[name][0]: _env_value(getattr(settings, name))
        for name in type(settings).model_fields
        if getattr(settings, name) is not None
    }


def unknown_variables(
    environ: Mapping[str, str],
    settings_classes: Iterable[type[BaseSettings]],
    also_known: Iterable[str] = (),
    prefix: str = "WALDUCK_",
) -> list[tuple[str, str | None]]:
    """``(variable, closest known name or None)`` for every ``WALDUCK_*`` variable no settings class reads:
    a misspelt variable is otherwise silently ignored (the classes use ``extra="ignore"`` because one
    environment carries every component's settings)."""
    known: set[str] = {name.upper() for name in also_known}
    for cls in settings_classes:
        for names in env_names(cls).values():
            known.update(names)
    unknown = []
    for variable in sorted(environ):
        upper = variable.upper()
        if (
            upper.startswith(prefix)
            and upper not in known
            and not any(upper.startswith(k) for k in known if k.endswith("_"))
        ):
            close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
            unknown.append((variable, close[0] if close else None))
    return unknown


def _aliases_by_name(settings_classes: Iterable[type[BaseSettings]]) -> dict[str, list[str]]:
    """Upper-case variable -> every variable of the same field (itself included, the primary first)."""
    found: dict[str, list[str]] = {}
    for cls in settings_classes:
        for names in env_names(cls).values():
            for name in names:
                found[name] = names
    return found


def merge_env(
    base: Mapping[str, str], overrides: Mapping[str, str], settings_classes: Iterable[type[BaseSettings]]
) -> dict[str, str]:
    """``base`` updated with ``overrides``, a field's other names dropped from ``base`` when an override sets one
    of them: ``WALDUCK_HEARTBEAT_INTERVAL`` (old name) given over an inherited
    ``WALDUCK_CONNECTOR_HEARTBEAT_INTERVAL`` (which would win, :class:`ComponentAliases`) still takes effect, and
    the other way round."""
    aliases = _aliases_by_name(settings_classes)
    env = dict(base)
    for variable in overrides:
        others = {n for n in aliases.get(variable.upper(), ()) if n != variable.upper()}
        for key in [k for k in env if k.upper() in others]:
            del env[key]
    env.update(overrides)
    return env


def shadowed_variables(
    environ: Mapping[str, str], settings_classes: Iterable[type[BaseSettings]]
) -> list[tuple[str, str]]:
    """``(ignored, used)`` for every variable set beside a name of the same field that comes first (a new
    ``WALDUCK_CONNECTOR_*`` name beside its older ``WALDUCK_*`` one) with another value: the first one wins."""
    upper = {k.upper(): v for k, v in environ.items()}
    shadowed = []
    for cls in settings_classes:
        for names in env_names(cls).values():
            present = [n for n in names if n in upper]
            shadowed += [(n, present[0]) for n in present[1:] if upper[n] != upper[present[0]]]
    return sorted(shadowed)
