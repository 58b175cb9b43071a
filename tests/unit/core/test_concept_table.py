"""docs/design.md's "one place for each concept" table names modules that exist and define what it says."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _rows() -> list[tuple[str, str, list[str]]]:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## 9. Layout: one place for each concept", 1)[1]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\| ([^|]+) \| `([\w/]+\.py)` \| ([^|]+) \|$", line)
        if m:
            names = re.findall(r"`(\w+)`", m.group(3))
            rows.append((m.group(1).strip(), m.group(2), names))
    return rows


def test_every_concept_module_exists_and_defines_its_names() -> None:
    rows = _rows()
    assert len(rows) >= 10, rows
    problems = []
    for concept, path, names in rows:
        if not (ROOT / path).is_file():
            problems.append(f"{concept}: {path} missing")
            continue
        module = importlib.import_module(path[:-3].replace("/", "."))
        problems += [f"{concept}: {path} lacks {n}" for n in names if not hasattr(module, n)]
    assert problems == []


def test_each_concept_has_one_row() -> None:
    concepts = [concept for concept, _, _ in _rows()]
    assert len(concepts) == len(set(concepts))
