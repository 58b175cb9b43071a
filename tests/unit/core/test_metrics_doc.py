"""Every metric defined in walduck/metrics.py is documented in docs/metrics.md (and nothing else is)."""

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

import walduck.metrics as metrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def _exposed_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name  # counters are exposed with a _total suffix
            names.add(f"{name}_total" if value._type == "counter" else name)
    return names


def test_every_metric_is_documented_with_prefix_and_base_units() -> None:
    doc = DOC.read_text()
    documented = set(re.findall(r"^\| `(walduck_[a-z_]+)` \|", doc, flags=re.M))
    exposed = _exposed_names()
    assert exposed, "no metrics found"
    assert exposed - documented == set(), "metrics missing from docs/metrics.md"
    assert documented - exposed == set(), "docs/metrics.md lists metrics that do not exist"
    for name in exposed:
        assert name.startswith("walduck_")
        assert not re.search(r"_(ms|milliseconds|kb|mb)(_|$)", name), f"{name}: use base units"
