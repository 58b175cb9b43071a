"""Every walduck series the Grafana dashboard (k8s/grafana/walduck.json) and the alerts query is in a live
scrape of the running stack (connector, compactor, query service as real processes, after a small workload):
a panel reading a series no component exports would stay empty in production (issue 17)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from stack.workload.generator import Workload
from walduck.lsn import parse_lsn

pytestmark = pytest.mark.integration

K8S = Path(__file__).resolve().parents[3] / "k8s"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _queried_families() -> set[str]:
    dash = json.loads((K8S / "grafana" / "walduck.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())["spec"]["groups"]
    exprs += [r["expr"] for g in rules for r in g["rules"]]
    names = set()
    for name in re.findall(r"\bwalduck_[a-z0-9_]+", " ".join(exprs)):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def _scraped_families(text: str) -> set[str]:
    """Family names of a text-format scrape (``# TYPE`` lines: a labelled metric with no child yet is there too)."""
    return set(re.findall(r"^# TYPE (walduck_[a-z0-9_]+) ", text, re.M))


async def test_every_queried_walduck_series_is_in_a_live_scrape(make_stack) -> None:
    stack = await make_stack(partitions=2)
    s = stack.settings
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    writer = s.pg_admin_dsn or s.pg_dsn
    with Workload(writer, s.catalog_schema, s.storage_root, seed=17) as wl:
        await asyncio.to_thread(
            wl.run, datasets=2, days=1, partitions_per_shard=2, rate=0, duration=20, max_commits=6
        )
    await asyncio.to_thread(stack.wait_caught_up, parse_lsn(_current_lsn(writer)), 180)

    scrapes = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for name, url, headers in (
            ("connector", f"http://127.0.0.1:{stack.connector_metrics_port}/metrics", {}),
            ("compactor", f"http://127.0.0.1:{stack.compactor_metrics_port}/metrics", {}),
            ("query", f"{stack.base_url}/metrics", {"x-iam-scopes": "timestore:admin"}),
        ):
            r = await client.get(url, headers=headers)
            assert r.status_code == 200, (name, r.status_code, r.text[:200])
            scrapes[name] = _scraped_families(r.text)
    seen = set().union(*scrapes.values())
    missing = sorted(_queried_families() - seen)
    assert not missing, f"queried but in no live scrape: {missing}"


def _current_lsn(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        (lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()  # type: ignore[misc]
    return lsn
