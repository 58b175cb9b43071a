"""Kafka security settings: validation at start (exit code 2) and the aiokafka arguments every client gets."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from walduck.config import KafkaSecurityProtocol, WalduckSettings
from walduck.kafka_security import client_kwargs, sasl_password, security_env, security_kwargs

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("WALDUCK_KAFKA_"):
            monkeypatch.delenv(key)


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    s = WalduckSettings(kafka_bootstrap="b:9092")
    assert s.kafka_security_protocol is KafkaSecurityProtocol.PLAINTEXT
    assert security_kwargs(s) == {}
    assert client_kwargs(s) == {"bootstrap_servers": "b:9092"}


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
            "needs WALDUCK_KAFKA_SASL_MECHANISM",
        ),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_password": "p",
            },
            "needs WALDUCK_KAFKA_SASL_USERNAME",
        ),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "u",
            },
            "needs WALDUCK_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_sasl_mechanism": "SCRAM-SHA-512"}, "does not use SASL"),
        ({"kafka_ssl_cafile": "/etc/hostname"}, "does not use TLS"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.crt"}, "no such file"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/etc/hostname"},
            "needs WALDUCK_KAFKA_SSL_CERTFILE",
        ),
        ({"kafka_security_protocol": "TLS"}, "PLAINTEXT"),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "GSSAPI",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": "p",
            },
            "SCRAM-SHA-512",
        ),
    ],
)
def test_inconsistent_settings_are_refused_with_a_clear_message(values: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as exc:
        WalduckSettings(**values)
    assert needle in str(exc.value)


def test_sasl_ssl_kwargs(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")  # a k8s Secret key as mounted (trailing newline stripped)
    s = WalduckSettings(
        kafka_bootstrap="kafka:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="walduck",
        kafka_sasl_password_file=password_file,
        kafka_ssl_check_hostname=False,
    )
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("walduck", "s3cret")
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert kw["ssl_context"].check_hostname is False
    assert kw["ssl_context"].verify_mode is ssl.CERT_REQUIRED
    password_file.write_text("rotated")  # read at each client start
    assert sasl_password(s) == "rotated"
    assert "s3cret" not in repr(s) and "rotated" not in repr(s)


def test_security_env_round_trips_to_a_child_process(tmp_path: Path) -> None:
    s = WalduckSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="u",
        kafka_sasl_password="p w",
    )
    env = security_env(s)
    child = WalduckSettings(**{k.removeprefix("WALDUCK_").lower(): v for k, v in env.items()})
    assert security_kwargs(child) == security_kwargs(s)


def test_cli_exits_2_on_sasl_without_mechanism() -> None:
    import os

    env = {
        **os.environ,
        "WALDUCK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "WALDUCK_KAFKA_SASL_USERNAME": "u",
        "WALDUCK_KAFKA_SASL_PASSWORD": "p",
        "WALDUCK_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "stack.cli", "compactor", "run"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "needs WALDUCK_KAFKA_SASL_MECHANISM" in run.stderr
    assert "Traceback" not in run.stderr


def test_faust_worker_gets_the_same_credentials(tmp_path: Path) -> None:
    import faust

    from support.faust_app import faust_credentials

    assert faust_credentials(WalduckSettings()) is None
    sasl = faust_credentials(
        WalduckSettings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="u",
            kafka_sasl_password="p",
        )
    )
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.protocol.value, sasl.mechanism.value, sasl.username, sasl.password) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "u",
        "p",
    )
    tls = faust_credentials(WalduckSettings(kafka_security_protocol="SSL"))
    assert isinstance(tls, faust.SSLCredentials) and tls.protocol.value == "SSL"
