"""The house's layers, read from the import graph (issue 14, item 1).

``walduck`` (shared vocabulary) imports no other package of the repo; the components (connectors, pipeline,
sinks) import only the vocabulary, never each other nor ``stack`` (orchestration, the top). Every import is
counted, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("walduck", "connectors", "pipeline", "sinks", "stack")
MAY_IMPORT = {
    "walduck": set(),
    "connectors": {"walduck"},
    "pipeline": {"walduck"},
    "sinks": {"walduck"},
    "stack": {"walduck", "connectors", "pipeline", "sinks"},
}
LONG_MODULE_LINES = 500


def _repo_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = sorted(
        f"{path.relative_to(ROOT)} imports {other}"
        for path in files
        for other in _repo_imports(path) - MAY_IMPORT[package] - {package}
    )
    assert bad == []
