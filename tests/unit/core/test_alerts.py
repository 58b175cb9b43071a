"""k8s/prometheusrule.yaml (issue 17): promtool checks and unit-tests every alert; each alert is labelled and
annotated for Alertmanager and links a runbook anchor that exists in docs/operations.md; every walduck_* series
it reads is defined in walduck/metrics.py.

promtool comes from Debian's `prometheus` package (scripts/bootstrap.sh installs it). Without it these tests
FAIL: alerts that were never evaluated are not known to work.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "k8s" / "prometheusrule.yaml"
UNIT_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
METRICS = ROOT / "walduck" / "metrics.py"
SEVERITIES = {"critical", "warning", "info"}


def _alerts() -> list[dict]:
    spec = yaml.safe_load(RULES.read_text())["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (scripts/bootstrap.sh does)")
    return path


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The CR's rule groups as a plain Prometheus rule file, next to the promtool unit tests."""
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    (tmp_path / "walduck.rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return tmp_path


def test_promtool_check_rules(rules_dir: Path) -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", "walduck.rules.yaml"], cwd=rules_dir, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in done.stdout, done.stdout


def test_promtool_unit_tests_pass(rules_dir: Path) -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", UNIT_TESTS.name], cwd=rules_dir, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_in_a_unit_test() -> None:
    tested = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                tested.add(check["alertname"])
    untested = {a["alert"] for a in _alerts()} - tested
    assert not untested, f"alerts no promtool test sees firing: {sorted(untested)}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_is_routable_and_links_an_existing_runbook(alert: dict) -> None:
    assert alert.get("labels", {}).get("severity") in SEVERITIES
    annotations = alert.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key), f"{alert['alert']}: no {key}"
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page.endswith("docs/operations.md") and anchor, annotations["runbook_url"]
    assert anchor in _anchors(OPERATIONS.read_text()), f"no heading for #{anchor} in docs/operations.md"


def defined_metrics() -> set[str]:
    """Every series name walduck exports: the names in walduck/metrics.py, with the histogram suffixes."""
    names = set(re.findall(r'"(walduck_[a-z0-9_]+)"', METRICS.read_text()))
    return names | {f"{n}_{s}" for n in names for s in ("bucket", "sum", "count", "created")}


def test_alerts_read_only_defined_walduck_metrics() -> None:
    used = {m for a in _alerts() for m in re.findall(r"\bwalduck_[a-z0-9_]+", a["expr"])}
    assert used, "the alerts read walduck's metrics"
    assert not used - defined_metrics(), sorted(used - defined_metrics())
