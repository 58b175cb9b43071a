"""Benchmark results: a rich table on the terminal, ``bench-results/<scenario>.json`` and optional PNG plots.

Every figure is reported with its baseline measured in the same run (this machine is small and noisy;
only ratios side by side mean something).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from walduck.timeutil import iso, utcnow

RESULTS_DIR = Path("bench-results")
console = Console()


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def machine_facts() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "at": iso(utcnow()),
        "git_commit": commit or None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem_kb * 1024,
        "versions": {
            p: version(p) for p in ("walduck", "duckdb", "aiokafka", "psycopg", "pyarrow", "faust-streaming")
        },
    }


@dataclass
class Row:
    metric: str
    value: float | str
    unit: str = ""
    baseline: float | str | None = None
    goal: str = ""
    ok: bool | None = None

    @property
    def ratio(self) -> float | None:
        if isinstance(self.value, int | float) and isinstance(self.baseline, int | float) and self.baseline:
            return float(self.value) / float(self.baseline)
        return None


@dataclass
class Result:
    scenario: str
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    _draws: list[tuple[str, Any]] = field(default_factory=list, repr=False)

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def write(self, out_dir: Path = RESULTS_DIR) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        if self._draws and importlib.util.find_spec("matplotlib") is None:
            self.notes.append("plots skipped: matplotlib is not installed (pip install 'walduck[bench]')")
        else:
            for name, draw in self._draws:
                self._render(name, draw, out_dir)
        self._draws.clear()
        path = out_dir / f"{self.scenario}.json"
        doc = {
            "scenario": self.scenario,
            "params": self.params,
            "machine": machine_facts(),
            "rows": [{**row.__dict__, "ratio": row.ratio} for row in self.rows],
            "series": self.series,
            "notes": self.notes,
            "plots": self.plots,
        }
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        return path

    def print(self) -> None:
        table = Table(title=f"walduck bench {self.scenario}")
        for col in ("metric", "value", "baseline", "ratio", "goal", "ok"):
            table.add_column(col)
        for row in self.rows:
            value = (
                f"{row.value:.4g} {row.unit}".strip()
                if isinstance(row.value, float)
                else f"{row.value} {row.unit}"
            )
            base = (
                ""
                if row.baseline is None
                else (f"{row.baseline:.4g}" if isinstance(row.baseline, float) else str(row.baseline))
            )
            ratio = "" if row.ratio is None else f"{row.ratio:.3g}×"
            ok = "" if row.ok is None else ("[green]yes[/]" if row.ok else "[red]no[/]")
            table.add_row(row.metric, value, base, ratio, row.goal, ok)
        console.print(table)
        for note in self.notes:
            console.print(f"  • {note}")

    def plot(self, name: str, draw: Any) -> None:
        """``draw(ax)`` fills a matplotlib axis; saved as ``<out dir>/<scenario>-<name>.png`` by :meth:`write`
        (next to the JSON, so ``--out`` keeps a run's plot with its figures)."""
        self._draws.append((name, draw))

    def _render(self, name: str, draw: Any, out_dir: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        draw(ax)
        fig.tight_layout()
        path = out_dir / f"{self.scenario}-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        self.plots.append(str(path))
