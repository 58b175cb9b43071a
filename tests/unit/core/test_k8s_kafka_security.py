"""k8s/kafka-sasl-ssl: every container loading walduck-config mounts the files its Kafka settings name."""

from __future__ import annotations

from pathlib import Path

import yaml

from walduck.config import WalduckSettings

K8S = Path(__file__).resolve().parents[3] / "k8s"
COMPONENT = K8S / "kafka-sasl-ssl"


def _literals() -> dict[str, str]:
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "walduck-config" and generator["behavior"] == "merge"
    return dict(item.split("=", 1) for item in generator["literals"])


def test_component_settings_are_valid_sasl_ssl(tmp_path: Path) -> None:
    env = _literals()
    files = {k: v for k, v in env.items() if k.endswith("FILE")}
    assert set(files) == {"WALDUCK_KAFKA_SASL_PASSWORD_FILE", "WALDUCK_KAFKA_SSL_CAFILE"}
    # the same settings, with the mounted files present, pass walduck's own validation
    local = {}
    for key, path in files.items():
        (tmp_path / Path(path).name).write_text("x")
        local[key] = str(tmp_path / Path(path).name)
    values = {k.removeprefix("WALDUCK_").lower(): v for k, v in {**env, **local}.items()}
    settings = WalduckSettings(**values)
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism == "SCRAM-SHA-512"


def test_every_container_with_walduck_config_mounts_the_files() -> None:
    wanted = {str(Path(v).parent) for k, v in _literals().items() if k.endswith("FILE")}
    patches = {}
    for patch in yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())["patches"]:
        doc = yaml.safe_load((COMPONENT / patch["path"]).read_text())
        patches[(doc["kind"], doc["metadata"]["name"])] = doc
    checked = 0
    for manifest in ("connector.yaml", "compactor.yaml", "query.yaml", "setup-job.yaml"):
        for doc in yaml.safe_load_all((K8S / manifest).read_text()):
            if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
                continue
            spec = doc["spec"]["template"]["spec"]
            patch = patches[(doc["kind"], doc["metadata"]["name"])]["spec"]["template"]["spec"]
            patched = {c["name"]: c for c in patch.get("containers", []) + patch.get("initContainers", [])}
            volumes = {v["name"]: v for v in patch["volumes"]}
            for container in spec["containers"] + spec.get("initContainers", []):
                refs = {e.get("configMapRef", {}).get("name") for e in container.get("envFrom", [])}
                if "walduck-config" not in refs:
                    continue
                mounts = {m["mountPath"]: m for m in patched[container["name"]]["volumeMounts"]}
                assert wanted <= set(mounts), (manifest, container["name"])
                for path in wanted:
                    assert mounts[path]["readOnly"] is True
                    assert volumes[mounts[path]["name"]]["secret"]["secretName"].startswith("walduck-kafka-")
                checked += 1
    assert checked == 6  # connector, compactor, query, and the setup Job's migrate, connector-setup, roles
