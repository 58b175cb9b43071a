"""Compactor failover with static group membership (issue 21): a member killed with -9 and restarted under the
same ``WALDUCK_COMPACTOR_GROUP_INSTANCE_ID`` gets its own partitions back at once, without a rebalance, so its
peer keeps its partitions (and state) untouched; the deltas stay exact."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.local import free_port
from support.compaction_runs import assert_no_duplicates
from support.compactor_kafka import (
    build_model,
    deltas_of,
    new_group,
    produce,
    start_runner,
    stop,
    wait_committed,
)
from support.reference_consumer import replay
from walduck.config import WalduckSettings

pytestmark = pytest.mark.integration
PARTITIONS = 4


def start_member(
    settings: WalduckSettings, group: str, instance: str, log: Path, port: int
) -> subprocess.Popen:
    """A static member (``instance``) serving /metrics on ``port``, with the compactor's session timeout."""
    return start_runner(settings, group, log, instance=instance, metrics_port=port, session_timeout_ms=None)


def scrape(port: int) -> dict[str, float]:
    """The member's compactor assignment metrics ({} while it is not serving /metrics)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "walduck_compactor_partition_assignments_total":
                out[f"assigned_{sample.labels['outcome']}"] = sample.value
            elif sample.name == "walduck_compactor_assigned_partitions":
                out["held"] = sample.value
    return out


def owned(log: Path) -> set[int]:
    """The partitions the member's last assignment gave it (its log)."""
    found = re.findall(r"holding partitions \[([\d, ]*)\]", log.read_text() if log.exists() else "")
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


async def wait_for(what: str, check, limit_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if check():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not within {limit_s} s")


async def test_static_member_restart_reclaims_its_partitions_and_the_peer_keeps_its_own(
    pipeline_topics: WalduckSettings, tmp_path: Path
) -> None:
    settings = pipeline_topics
    model = build_model(21, ops=600)
    # split at a transaction boundary: a half-received transaction keeps its window open (nothing committed)
    half = next(
        i
        for i in range(len(model.records) // 2, len(model.records))
        if model.records[i].commit_lsn != model.records[i - 1].commit_lsn
    )
    await produce(settings, model.records[:half])
    group = new_group()
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    ports = {name: free_port() for name in ("a", "b")}
    procs = {"a": start_member(settings, group, "compactor-a", logs["a"], ports["a"])}
    try:
        await wait_for("a holds every partition", lambda: scrape(ports["a"]).get("held") == PARTITIONS, 60)
        procs["b"] = start_member(settings, group, "compactor-b", logs["b"], ports["b"])
        await wait_for(
            "a and b share the partitions",
            lambda: (
                scrape(ports["a"]).get("held", 0) + scrape(ports["b"]).get("held", 0) == PARTITIONS
                and scrape(ports["b"]).get("held", 0) > 0
            ),
            60,
        )
        await wait_committed(settings, group)
        # the eager rebalance that let b in revoked all of a's partitions: the ones a got back kept their
        # state (nothing replayed), the others went to b
        a_metrics = scrape(ports["a"])
        assert a_metrics.get("assigned_kept", 0) == a_metrics["held"] > 0, a_metrics
        a_parts, b_parts = owned(logs["a"]), owned(logs["b"])
        b_before = scrape(ports["b"])
        b_log_before = logs["b"].read_text()

        procs["a"].send_signal(signal.SIGKILL)
        procs["a"].wait()
        producing = asyncio.ensure_future(produce(settings, model.records[half:]))
        restarted = time.monotonic()
        procs["a"] = start_member(settings, group, "compactor-a", logs["a"], ports["a"])
        await wait_for(
            "a holds its partitions again",
            lambda: scrape(ports["a"]).get("held") == len(a_parts),
            25,
        )
        reclaim_s = time.monotonic() - restarted
        await producing
        await wait_committed(settings, group)

        assert a_parts | b_parts == set(range(PARTITIONS)) and not a_parts & b_parts, (a_parts, b_parts)
        assert owned(logs["a"]) == a_parts, "the restarted member did not get its own partitions back"
        b_after = scrape(ports["b"])
        assert b_after == b_before, f"the peer saw a rebalance: {b_before} -> {b_after}"
        new_b_log = logs["b"].read_text()[len(b_log_before) :]
        assert "Revoking" not in new_b_log and "restored from" not in new_b_log, new_b_log[-2000:]
        # far inside the 30 s static session timeout: the broker did not wait for the dead member's session
        assert reclaim_s < 15, reclaim_s
    finally:
        for proc in procs.values():
            stop(proc)
    deltas = await deltas_of(settings)
    assert_no_duplicates(deltas)
    assert replay(deltas) == model.visible()
    print(
        f"[failover] static member reclaimed {sorted(a_parts)} in {reclaim_s:.2f} s; peer kept {sorted(b_parts)}"
    )
