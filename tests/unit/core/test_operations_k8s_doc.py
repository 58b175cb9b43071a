"""docs/operations.md "Deploy on Kubernetes with Strimzi and CloudNativePG" (issue 17): a platform engineer can
follow it top to bottom — every file and kustomization it names exists, and it names the roles, topics,
monitoring objects and alerts the manifests create (so the page and k8s/ cannot drift apart silently).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
TITLE = "## Deploy on Kubernetes with Strimzi and CloudNativePG"


def _section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    assert TITLE in text, f"docs/operations.md has no section {TITLE!r}"
    body = text.split(TITLE, 1)[1]
    return body.split("\n## ", 1)[0]


def _objects(kind: str) -> list[dict]:
    found = []
    for path in (ROOT / "k8s").rglob("*.yaml"):
        if "crds" in path.parts:
            continue
        found += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == kind]
    return found


def test_every_path_and_kustomization_it_names_exists() -> None:
    section = _section()
    paths = set(re.findall(r"(?<![\w/.-])((?:k8s|docs)/[\w./-]*[\w/]|Dockerfile)", section))
    assert len(paths) >= 8, paths
    missing = [p for p in sorted(paths) if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, missing
    for target in re.findall(r"apply -k ([\w./-]+)", section):
        if target.startswith("k8s"):
            assert (ROOT / target / "kustomization.yaml").is_file(), target
    for target in re.findall(r"apply -f ([\w./-]+)", section):
        assert (ROOT / target).is_file(), target


def test_it_names_what_the_manifests_create() -> None:
    section = _section()
    for topic in _objects("KafkaTopic"):
        assert topic["metadata"]["name"] in section, topic["metadata"]["name"]
    (user,) = _objects("KafkaUser")
    assert user["metadata"]["name"] in section and "SCRAM-SHA-512" in section
    (cluster,) = _objects("Cluster")
    for role in cluster["spec"]["managed"]["roles"]:
        assert role["name"] in section, role["name"]
    assert "wal_level=logical" in section
    for kind in ("PodMonitor", "PrometheusRule", "PodDisruptionBudget", "NetworkPolicy"):
        assert kind in section or kind.replace("PodDisruptionBudget", "PDB") in section, kind
    (rules,) = _objects("PrometheusRule")
    alerts = [r for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert f"{len(alerts)} alerts" in section, f"the section should say '{len(alerts)} alerts'"
    assert f"the {len(alerts)} `Walduck*`" in section
    for step in range(1, 7):
        assert re.search(rf"^### {step}\. ", section, re.M), f"step {step}"
