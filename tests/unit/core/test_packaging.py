"""What `pip install .` pulls is what the product needs at run time (issue 14, item 10).

Checked from the sources: the runtime dependency list in pyproject.toml, and every import in the product
packages. Evaluation and benchmark tools live in extras (`eval`, `bench`); test tools never reach product code.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PRODUCT = ("walduck", "connectors", "pipeline", "sinks")
NOT_RUNTIME = {"faust", "matplotlib", "pytest", "hypothesis", "schemathesis", "pyinstrument"}
# modules a product file may import lazily, inside a function, because an extra provides them
LAZY_EXTRAS = {("stack/bench/report.py", "matplotlib")}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    for stop in "<>=![; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.strip().lower()


def test_runtime_dependencies_exclude_evaluation_and_bench_tools() -> None:
    runtime = {_name(r) for r in _project()["dependencies"]}
    assert not runtime & {"faust-streaming", "matplotlib"}, runtime
    extras = _project()["optional-dependencies"]
    assert {_name(r) for r in extras["eval"]} == {"faust-streaming"}
    assert {_name(r) for r in extras["bench"]} == {"matplotlib"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(top-level module, at module level?)`` for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], id(node) in top_level))
    return found


@pytest.mark.parametrize("package", PRODUCT)
def test_product_code_imports_no_test_or_extra_only_module(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for module, module_level in _imports(path):
            if module not in NOT_RUNTIME:
                continue
            if (rel, module) in LAZY_EXTRAS and not module_level:
                continue
            bad.append(f"{rel}: import {module}")
    assert not bad, bad
