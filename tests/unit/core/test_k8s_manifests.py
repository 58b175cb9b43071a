"""k8s/ validated offline (issue 17): core objects against Kubernetes' own JSON schemas (the
``kubernetes-validate`` package ships them), custom resources against the openAPIV3 schema of their CRD in
``k8s/crds/``, and the platform rules a restricted cluster enforces (non-root, read-only root filesystem,
no capabilities, seccomp), PodDisruptionBudgets, PodMonitors that match the pods, topics and Kafka ACLs that
match the config map.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from walduck.config import WalduckSettings

K8S = Path(__file__).resolve().parents[3] / "k8s"
CRDS = K8S / "crds"
KUBERNETES_VERSION = "1.31.0"  # oldest minor still supported upstream when written
CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1"}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}


def _kustomizations() -> list[Path]:
    return sorted(p for p in K8S.rglob("kustomization.yaml") if CRDS not in p.parents)


def _resource_files() -> set[Path]:
    """Every manifest a kustomization lists under ``resources`` (directories are kustomizations)."""
    files = set()
    for kust in _kustomizations():
        for entry in yaml.safe_load(kust.read_text()).get("resources", []):
            path = (kust.parent / entry).resolve()
            if path.is_file():
                files.add(path)
            else:
                assert (path / "kustomization.yaml").is_file(), f"{kust}: {entry} is no kustomization"
    return files


def _patch_files() -> set[Path]:
    files = set()
    for kust in _kustomizations():
        for patch in yaml.safe_load(kust.read_text()).get("patches", []):
            if "path" in patch:
                files.add((kust.parent / patch["path"]).resolve())
    return files


def _docs() -> Iterator[tuple[Path, dict]]:
    for path in sorted(_resource_files()):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def _all_docs() -> list[dict]:
    return [doc for _, doc in _docs()]


def _crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def _validate(doc: dict) -> None:
    """Raise if ``doc`` does not validate against its schema (Kubernetes' own, or its CRD's)."""
    api, kind = doc["apiVersion"], doc["kind"]
    if api in CORE_GROUPS:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return
    schemas = _crd_schemas()
    assert (api, kind) in schemas, f"no CRD schema for {api} {kind} in k8s/crds/"
    jsonschema.Draft7Validator(schemas[(api, kind)]).validate(doc)


def test_every_manifest_is_reached_by_a_kustomization() -> None:
    reached = _resource_files() | _patch_files() | {p.resolve() for p in _kustomizations()}
    stray = [
        p.relative_to(K8S).as_posix()
        for p in K8S.rglob("*.yaml")
        if CRDS not in p.parents and p.resolve() not in reached
    ]
    assert not stray, f"manifests no kustomization lists (so no test validates them): {stray}"


@pytest.mark.parametrize(
    "path,doc",
    [pytest.param(p, d, id=f"{p.relative_to(K8S)}:{d['kind']}/{d['metadata']['name']}") for p, d in _docs()],
)
def test_manifest_validates_against_its_schema(path: Path, doc: dict) -> None:
    assert doc["kind"] not in KUSTOMIZE_KINDS
    _validate(doc)


def test_the_schemas_catch_a_wrong_field() -> None:
    docs = {d["kind"]: d for d in _all_docs()}
    for kind, breaks in {
        "Deployment": lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolice="x"),
        "KafkaTopic": lambda d: d["spec"].update(replicationFactor=3),
        "KafkaUser": lambda d: d["spec"]["authentication"].update(type="scram-sha-256"),
        "PodMonitor": lambda d: d["spec"].update(endpoints=[]),
        "PrometheusRule": lambda d: d["spec"]["groups"][0]["rules"][0].update(severity="page"),
        "Cluster": lambda d: d["spec"]["postgresql"].update(wal_level="logical"),
    }.items():
        broken = copy.deepcopy(docs[kind])
        breaks(broken)
        with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
            _validate(broken)


def _workloads() -> list[dict]:
    return [d for d in _all_docs() if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def _pod(doc: dict) -> dict:
    return doc["spec"]["template"]


def test_every_pod_runs_restricted() -> None:
    bad = []
    for doc in _workloads():
        spec = _pod(doc)["spec"]
        name = doc["metadata"]["name"]
        pod_sc = spec.get("securityContext", {})
        if pod_sc.get("runAsNonRoot") is not True or not isinstance(pod_sc.get("runAsUser"), int):
            bad.append(f"{name}: pod not runAsNonRoot with a numeric runAsUser")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            bad.append(f"{name}: seccomp not RuntimeDefault")
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                bad.append(f"{name}/{c['name']}: root filesystem writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                bad.append(f"{name}/{c['name']}: privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                bad.append(f"{name}/{c['name']}: capabilities not dropped")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                bad.append(f"{name}/{c['name']}: no writable /tmp (read-only root)")
    assert not bad, bad


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_replicated_workloads_have_a_disruption_budget() -> None:
    pdbs = [d for d in _all_docs() if d["kind"] == "PodDisruptionBudget"]
    for doc in _workloads():
        if doc["kind"] == "Job" or doc["spec"].get("replicas", 1) < 2:
            continue
        labels = _pod(doc)["metadata"]["labels"]
        assert any(_selects(p["spec"]["selector"], labels) for p in pdbs), doc["metadata"]["name"]


def test_every_walduck_pod_is_covered_by_a_network_policy_and_metrics_by_a_pod_monitor() -> None:
    docs = _all_docs()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    for doc in _workloads():
        labels = _pod(doc)["metadata"]["labels"]
        assert any(_selects(p["spec"]["podSelector"], labels) for p in policies), doc["metadata"]["name"]
        if doc["kind"] == "Job":
            continue
        (container,) = _pod(doc)["spec"]["containers"]
        ports = {p["name"] for p in container.get("ports", [])}
        matching = [m for m in monitors if _selects(m["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{doc['metadata']['name']}: {len(matching)} PodMonitors"
        (endpoint,) = matching[0]["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in ports, (doc["metadata"]["name"], endpoint["port"], ports)
        # the alerts select on the pod's component label: PodMonitor must copy it onto the series
        assert "app.kubernetes.io/component" in matching[0]["spec"]["podTargetLabels"]


def _config() -> dict[str, str]:
    (cm,) = [d for d in _all_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "walduck-config"]
    return cm["data"]


def test_kafka_topics_match_the_config_and_are_durable() -> None:
    config = _config()
    topics = {
        d["spec"].get("topicName", d["metadata"]["name"]): d["spec"]
        for d in _all_docs()
        if d["kind"] == "KafkaTopic"
    }
    state = config["WALDUCK_COMPACTOR_STATE_TOPIC"]
    names = {
        config["WALDUCK_CHANGES_TOPIC"],
        config["WALDUCK_DELTAS_TOPIC"],
        config["WALDUCK_DLQ_TOPIC"],
        state,
    }
    assert set(topics) == names
    for name, spec in topics.items():
        assert spec["partitions"] == int(config["WALDUCK_TOPIC_PARTITIONS"]), name
        assert spec["replicas"] >= 3 and int(spec["config"]["min.insync.replicas"]) == 2, name
        assert "retention.ms" in spec["config"] or name == state, name
    assert topics[state]["config"]["cleanup.policy"] == "compact", "one snapshot per partition survives"
    defaults = WalduckSettings()
    for history, kept_ms in (
        (config["WALDUCK_CHANGES_TOPIC"], defaults.changes_retention_ms),
        (config["WALDUCK_DELTAS_TOPIC"], defaults.deltas_retention_ms),
    ):
        # bounded (history and its heartbeats stop piling up), and long enough for the compactor's restore: its
        # state snapshot is at most WALDUCK_COMPACTOR_SNAPSHOT_MAX_AGE_S (1 h) old
        assert int(topics[history]["config"]["retention.ms"]) == kept_ms > 24 * 3600 * 1000, history


def test_kafka_user_is_scram_with_acls_for_each_topic() -> None:
    config = _config()
    (user,) = [d for d in _all_docs() if d["kind"] == "KafkaUser"]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    acls = user["spec"]["authorization"]["acls"]
    allowed = {(a["resource"]["type"], a["resource"].get("name")): set(a["operations"]) for a in acls}
    assert {"Write", "Read"} <= allowed[("topic", config["WALDUCK_CHANGES_TOPIC"])]
    assert {"Write", "Read"} <= allowed[("topic", config["WALDUCK_DELTAS_TOPIC"])]
    assert "Write" in allowed[("topic", config["WALDUCK_DLQ_TOPIC"])]
    assert {"Write", "Read"} <= allowed[("topic", config["WALDUCK_COMPACTOR_STATE_TOPIC"])]
    assert "Read" in allowed[("group", "walduck-compactor")]
    assert not any("All" in ops or "Create" in ops for ops in allowed.values()), "least privilege"


def test_cnpg_cluster_has_logical_wal_and_the_walduck_roles() -> None:
    (cluster,) = [d for d in _all_docs() if d["kind"] == "Cluster"]
    assert cluster["spec"]["postgresql"]["parameters"]["wal_level"] == "logical"
    roles = {r["name"]: r for r in cluster["spec"]["managed"]["roles"]}
    assert roles["walduck_connector"]["replication"] is True
    assert {"walduck_reader", "walduck_exec"} <= set(roles)
    assert not any(r.get("superuser") for r in roles.values())


def test_plain_kafka_overlay_patches_existing_keys_and_creates_the_topics() -> None:
    overlay = K8S / "overlays" / "plain-kafka"
    kust = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    config = _config()
    for patch in kust["patches"]:
        for op in yaml.safe_load(patch["patch"]):
            key = op["path"].removeprefix("/data/")
            assert op["op"] != "replace" or key in config, f"replace of a key the base lacks: {key}"
    (job,) = yaml.safe_load_all((overlay / "topics-job.yaml").read_text())
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    for var in (
        "WALDUCK_CHANGES_TOPIC",
        "WALDUCK_DELTAS_TOPIC",
        "WALDUCK_DLQ_TOPIC",
        "WALDUCK_COMPACTOR_STATE_TOPIC",
        "WALDUCK_TOPIC_PARTITIONS",
    ):
        assert f"${var}" in script or f"${{{var}}}" in script, var
    assert "--replication-factor 3" in script and "min.insync.replicas=2" in script


def test_metrics_listeners_bind_the_pod_ip_with_the_manifests_env() -> None:
    """A PodMonitor scrapes the pod IP: the connector's and compactor's /metrics must not listen on loopback
    (``WalduckSettings.metrics_host`` from the environment the pod gets: the ConfigMap, then its own env)."""
    from walduck.config import WalduckSettings

    configmap: dict[str, str] = {}
    for doc in yaml.safe_load_all((K8S / "configmap.yaml").read_text()):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "walduck-config":
            configmap.update(doc.get("data") or {})
    checked = set()
    for doc in _workloads():
        for c in _pod(doc)["spec"]["containers"]:
            if c["name"] not in ("connector", "compactor"):
                continue
            refs = {e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])}
            env = {**(configmap if "walduck-config" in refs else {})}
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            with pytest.MonkeyPatch.context() as mp:
                for key in [k for k in os.environ if k.startswith("WALDUCK_")]:
                    mp.delenv(key)
                for key, value in env.items():
                    if key.startswith("WALDUCK_METRICS"):
                        mp.setenv(key, value)
                host = WalduckSettings().metrics_host
            assert host not in ("127.0.0.1", "localhost", "::1"), (c["name"], host)
            checked.add(c["name"])
    assert checked == {"connector", "compactor"}


PROBE_PATHS = {
    "connector": {"/ready", "/live"},
    "compactor": {"/ready", "/live"},
    "query": {"/ready", "/live", "/health"},
}


def test_every_long_running_pod_has_probes_its_component_answers() -> None:
    """Readiness and liveness on every component (the connector and compactor had none), on paths the component
    serves from its state (walduck/health.py; the query service's /ready, /live): not a port that answers 200
    on any path."""
    for doc in _workloads():
        if doc["kind"] == "Job":
            continue
        (container,) = _pod(doc)["spec"]["containers"]
        component = _pod(doc)["metadata"]["labels"]["app.kubernetes.io/component"]
        ports = {p["name"] for p in container.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, (doc["metadata"]["name"], probe)
            get = container[probe]["httpGet"]
            assert get["path"] in PROBE_PATHS[component] and get["port"] in ports, (
                doc["metadata"]["name"],
                get,
            )
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_query_pod_monitor_authenticates_the_way_the_route_accepts() -> None:
    """The query service's /metrics needs the metrics scope or WALDUCK_QUERY_METRICS_TOKEN_FILE's bearer token; a
    PodMonitor can only send the latter: its `authorization` Secret is the one the query pods mount there."""
    docs = _all_docs()
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"] == "walduck-query"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    auth = endpoint["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    secret, key = auth["credentials"]["name"], auth["credentials"]["key"]
    (query,) = [d for d in _workloads() if d["metadata"]["name"] == "walduck-query"]
    pod = _pod(query)["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    token_file = Path(env["WALDUCK_QUERY_METRICS_TOKEN_FILE"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(token_file.parent)]
    source = volumes[mount["name"]]["secret"]
    assert source["secretName"] == secret and source.get("optional") is not True
    items = {i["key"]: i["path"] for i in source.get("items", [])} or {key: key}
    assert items.get(key) == token_file.name, (items, token_file)
    assert _config().get("WALDUCK_QUERY_METRICS_SCOPE"), "the scope stays the gateway's way in"
