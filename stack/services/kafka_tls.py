"""A throwaway CA and broker certificate for a local Kafka's TLS listener, made with the JDK's ``keytool``.

Kafka already needs Java 17+, and ``keytool`` ships with it; the Python ``cryptography`` package is not a
walduck dependency, so the JDK does this (docs/security.md "Kafka"). Everything lives in
``<data_dir>/security``: ``ca.pem`` (what clients trust: ``WALDUCK_KAFKA_SSL_CAFILE``), ``broker.p12`` (the
broker's key and CA-signed certificate, SAN ``IP:127.0.0.1,DNS:localhost``), ``truststore.p12`` (the CA, for
the node's own inter-broker connection) and the store password. The CA's private key never leaves
``ca.p12``; made once per data dir, valid 30 days (delete the dir to renew).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stack.services.errors import BinariesMissing, ServiceError

VALIDITY_DAYS = "30"
SAN = "SAN=IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class BrokerKeystores:
    keystore: Path
    truststore: Path
    ca_pem: Path
    password: str


def ensure_broker_keystores(security_dir: Path) -> BrokerKeystores:
    """The broker's keystore/truststore and the CA's PEM, made with keytool the first time."""
    security_dir.mkdir(parents=True, exist_ok=True)
    password_file = security_dir / "store-password"
    stores = BrokerKeystores(
        keystore=security_dir / "broker.p12",
        truststore=security_dir / "truststore.p12",
        ca_pem=security_dir / "ca.pem",
        password=password_file.read_text().strip() if password_file.exists() else "",
    )
    if stores.password and all(p.exists() for p in (stores.keystore, stores.truststore, stores.ca_pem)):
        return stores
    keytool = shutil.which("keytool")
    if keytool is None:
        raise BinariesMissing(
            "a TLS listener needs the JDK's `keytool` to make its throwaway CA; "
            "install it, e.g. `apt-get install -y openjdk-17-jre-headless`"
        )
    password = secrets.token_urlsafe(18)
    work = security_dir / "tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    def run(*args: str) -> None:
        out = subprocess.run(
            [keytool, "-J-Xmx64m", *args], capture_output=True, text=True, timeout=120, cwd=work
        )
        if out.returncode != 0:
            raise ServiceError(f"keytool {args[0]} failed (exit {out.returncode}):\n{out.stdout}{out.stderr}")

    common = ["-storetype", "PKCS12", "-storepass", password, "-keypass", password]
    ca, broker, trust = work / "ca.p12", work / "broker.p12", work / "truststore.p12"
    # the CA: self-signed, basicConstraints CA:true
    run("-genkeypair", "-alias", "ca", "-dname", "CN=walduck local Kafka CA", "-keyalg", "RSA",
        "-keysize", "2048", "-validity", VALIDITY_DAYS, "-ext", "bc:c", "-keystore", str(ca), *common)  # fmt: skip
    run("-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca), "-storepass", password,
        "-file", str(work / "ca.pem"))  # fmt: skip
    # the broker's key, a request, the CA's signature, then CA + signed chain back into its keystore
    run("-genkeypair", "-alias", "broker", "-dname", "CN=localhost", "-keyalg", "RSA", "-keysize", "2048",
        "-validity", VALIDITY_DAYS, "-ext", SAN, "-keystore", str(broker), *common)  # fmt: skip
    run("-certreq", "-alias", "broker", "-keystore", str(broker), "-storepass", password,
        "-file", str(work / "broker.csr"))  # fmt: skip
    run("-gencert", "-alias", "ca", "-keystore", str(ca), "-storepass", password, "-rfc",
        "-infile", str(work / "broker.csr"), "-outfile", str(work / "broker.pem"),
        "-validity", VALIDITY_DAYS, "-ext", SAN, "-ext", "ku:c=digitalSignature,keyEncipherment",
        "-ext", "eku=serverAuth,clientAuth")  # fmt: skip
    run("-importcert", "-noprompt", "-alias", "ca", "-file", str(work / "ca.pem"), "-keystore", str(broker),
        *common)  # fmt: skip
    run("-importcert", "-noprompt", "-alias", "broker", "-file", str(work / "broker.pem"),
        "-keystore", str(broker), *common)  # fmt: skip
    run("-importcert", "-noprompt", "-alias", "ca", "-file", str(work / "ca.pem"), "-keystore", str(trust),
        *common)  # fmt: skip
    for name in ("ca.p12", "broker.p12", "truststore.p12", "ca.pem"):
        (work / name).chmod(0o600 if name.endswith(".p12") else 0o644)
        os.replace(work / name, security_dir / name)
    tmp = password_file.with_suffix(".tmp")
    tmp.write_text(password)
    tmp.chmod(0o600)
    os.replace(tmp, password_file)
    shutil.rmtree(work, ignore_errors=True)
    return BrokerKeystores(stores.keystore, stores.truststore, stores.ca_pem, password)
