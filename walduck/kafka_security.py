"""Kafka client security: the aiokafka keyword arguments every walduck Kafka client is built with.

One place turns the ``WALDUCK_KAFKA_*`` security settings (:class:`~walduck.config.WalduckSettings`) into
``security_protocol``, ``ssl_context`` (:func:`aiokafka.helpers.create_ssl_context`) and ``sasl_*`` arguments;
the connector's producer, the compactor's consumer/producer, the query service's consumers, the topic admin
helpers and the benches all take :func:`client_kwargs`. :func:`start_client` starts a client and turns a
refused login or a failed TLS handshake (which aiokafka only logs before a generic "Unable to bootstrap")
into :class:`KafkaSecurityError`, so a wrong password stops a component with a clear message instead of an
endless reconnect loop.
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol

from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from walduck.config import KafkaSecurityProtocol, WalduckSettings, settings_env
from walduck.errors import WalduckError

SASL_PROTOCOLS = (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)
TLS_PROTOCOLS = (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)


class KafkaSecurityError(WalduckError, RuntimeError):
    """The broker refused this client's credentials, or the TLS handshake failed: retrying will not help."""


class _Startable(Protocol):
    async def start(self) -> None: ...


def sasl_password(settings: WalduckSettings) -> str:
    """The SASL password: ``WALDUCK_KAFKA_SASL_PASSWORD``, else the content of the password file (read now)."""
    if settings.kafka_sasl_password is not None:
        return settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_sasl_password_file is not None:
        try:
            return settings.kafka_sasl_password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise KafkaSecurityError(
                f"cannot read WALDUCK_KAFKA_SASL_PASSWORD_FILE={settings.kafka_sasl_password_file}: {exc}"
            ) from exc
    return ""


def ssl_context(settings: WalduckSettings) -> ssl.SSLContext:
    """TLS context: the CA file (or the system trust store), the client certificate, hostname checking."""
    key_password = settings.kafka_ssl_key_password
    try:
        context = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=key_password.get_secret_value() if key_password is not None else None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSecurityError(f"cannot load the Kafka TLS files: {exc}") from exc
    if settings.kafka_ssl_cafile is None:
        context.load_default_certs()
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def security_kwargs(settings: WalduckSettings) -> dict[str, Any]:
    """``security_protocol`` plus the TLS/SASL keyword arguments of an aiokafka client (empty for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol is KafkaSecurityProtocol.PLAINTEXT:
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol.value}
    if protocol in TLS_PROTOCOLS:
        kwargs["ssl_context"] = ssl_context(settings)
    if protocol in SASL_PROTOCOLS:
        assert settings.kafka_sasl_mechanism is not None  # WalduckSettings validated it
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism.value
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = sasl_password(settings)
    return kwargs


def client_kwargs(settings: WalduckSettings) -> dict[str, Any]:
    """``bootstrap_servers`` and the security arguments: ``AIOKafkaConsumer(**client_kwargs(s), ...)``."""
    return {"bootstrap_servers": settings.kafka_bootstrap, **security_kwargs(settings)}


def security_env(settings: WalduckSettings) -> dict[str, str]:
    """The ``WALDUCK_KAFKA_*`` security variables that give a child process the same settings (the security
    part of :func:`walduck.config.settings_env`, which ``component_env`` hands over whole)."""
    return {
        k: v
        for k, v in settings_env(settings).items()
        if k.startswith(("WALDUCK_KAFKA_SECURITY_", "WALDUCK_KAFKA_SASL_", "WALDUCK_KAFKA_SSL_"))
    }


async def start_client(client: _Startable, settings: WalduckSettings) -> None:
    """``await client.start()``; a refused login or failed TLS handshake raises :class:`KafkaSecurityError`.

    aiokafka logs the authentication error of each bootstrap host and then raises a bare
    ``KafkaConnectionError``; on that error this probes the first bootstrap host once with the same
    settings to tell a security failure (permanent) from a broker that is down (retryable, re-raised).
    """
    try:
        await client.start()
    except KafkaConnectionError:
        if settings.kafka_security_protocol is not KafkaSecurityProtocol.PLAINTEXT:
            try:
                await probe(settings)
            except KafkaSecurityError:
                await _close(client)
                raise
        raise


async def _close(client: object) -> None:
    """Release a client that failed to start (producers/consumers ``stop()``, the admin client ``close()``)."""
    import contextlib

    close = getattr(client, "stop", None) or getattr(client, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


async def probe(settings: WalduckSettings, timeout_s: float = 10.0) -> None:
    """Open one authenticated connection to the first bootstrap host; KafkaSecurityError if it is refused.

    Other failures (refused TCP connection, timeout) return quietly: they say nothing about security.
    """
    import asyncio

    from aiokafka.conn import create_conn

    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    kwargs = security_kwargs(settings)
    where = f"Kafka at {host}:{port} ({settings.kafka_security_protocol.value})"
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **kwargs), timeout_s
        )
    except (SaslAuthenticationFailed, IllegalSaslStateError) as exc:
        raise KafkaSecurityError(
            f"{where} refused the {settings.kafka_sasl_mechanism} login of user "
            f"{settings.kafka_sasl_username!r}: {exc}; check WALDUCK_KAFKA_SASL_USERNAME and "
            "WALDUCK_KAFKA_SASL_PASSWORD / WALDUCK_KAFKA_SASL_PASSWORD_FILE"
        ) from exc
    except UnsupportedSaslMechanismError as exc:
        raise KafkaSecurityError(f"{where}: {exc}; check WALDUCK_KAFKA_SASL_MECHANISM") from exc
    except ssl.SSLError as exc:
        raise KafkaSecurityError(
            f"{where}: TLS handshake failed: {exc}; check WALDUCK_KAFKA_SSL_CAFILE (the CA that signed the "
            "broker's certificate), WALDUCK_KAFKA_SSL_CHECK_HOSTNAME and the client certificate"
        ) from exc
    except (OSError, TimeoutError, KafkaConnectionError, ValueError):
        return
    conn.close()
