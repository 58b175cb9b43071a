"""Connector failover (issue 21): after kill -9 a restarted connector streams again within seconds, also while
the old walsender still holds the slot ("replication slot … is active for PID …"). PostgreSQL's
``pg_replication_slots.active_pid`` and ``confirmed_flush_lsn`` are the oracle, plus the connector's metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    current_lsn,
    kill9,
    start_subprocess,
    wait_snapshot_done,
)
from prometheus_client.parser import text_string_to_metric_families
from workloads import random_mix  # type: ignore[import-not-found]

from connectors.protocol import ReplicationConnection
from stack.local import free_port

pytestmark = pytest.mark.integration


def active_pid(dsn: str, slot: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot]
        ).fetchone()
    return row[0] if row else None


def confirmed(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            [slot],
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def metric(port: int, name: str) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


async def until(what: str, check, limit_s: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        if check():
            return time.monotonic() - began
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {limit_s} s")


async def hold_slot(dsn: str, slot: str, publication: str) -> tuple[ReplicationConnection, int]:
    """A walsender of the test's own streaming the slot and never answering: the stale holder."""
    repl = await ReplicationConnection.open(dsn, application_name="stale-holder")
    await repl.start(slot, 0, {"proto_version": "1", "publication_names": publication})
    pid = active_pid(dsn, slot)
    assert pid is not None
    return repl, pid


async def test_kill9_and_restart_streams_again_within_seconds(
    catalog_dsn: str, fresh_topics, tmp_path: Path
) -> None:
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    slot, log = settings.slot_name, tmp_path / "connector.log"
    env = {"WALDUCK_HEARTBEAT_INTERVAL": "0.3"}
    proc = start_subprocess(settings, log, **env)
    resumed: list[float] = []
    try:
        await wait_snapshot_done(catalog_dsn, slot)
        workload = asyncio.ensure_future(
            asyncio.to_thread(random_mix, catalog_dsn, tmp_path / "storage", seed=7, duration=14.0, rate=20.0)
        )
        for _ in range(4):
            await asyncio.sleep(2.0)
            await until("connector streaming", lambda: active_pid(catalog_dsn, slot) is not None, 15)
            old_pid = active_pid(catalog_dsn, slot)
            kill9(proc)
            killed = time.monotonic()
            proc = start_subprocess(settings, log, **env)
            target = current_lsn(catalog_dsn)
            # resumed = a new walsender holds the slot and it confirmed what was committed at the kill
            await until(
                "streaming resumed after kill -9",
                lambda old_pid=old_pid, target=target: (
                    (active_pid(catalog_dsn, slot) not in (None, old_pid))
                    and confirmed(catalog_dsn, slot) >= target
                ),
                20,
            )
            resumed.append(time.monotonic() - killed)
        commits = await workload
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"[failover] connector kill -9 x{len(resumed)}: resumed in {[round(r, 2) for r in resumed]} s")
    assert commits > 50
    assert max(resumed) < 5.0, resumed


async def _slot_held_after_kill9(catalog_dsn: str, fresh_topics: Any, tmp_path: Path) -> tuple:
    """A connector took its snapshot and was killed (-9); another session now holds its slot. Returns the
    settings, slot, log, a free metrics port and the holder (connection, backend pid)."""
    settings = await fresh_topics(partitions=4, pg_dsn=catalog_dsn)
    slot, log, port = settings.slot_name, tmp_path / "connector.log", free_port()
    proc = start_subprocess(settings, log)
    await wait_snapshot_done(catalog_dsn, slot)
    kill9(proc)
    await until("slot released", lambda: active_pid(catalog_dsn, slot) is None, 10)
    holder, holder_pid = await hold_slot(catalog_dsn, slot, settings.publication_name)
    return settings, slot, log, port, holder, holder_pid


async def test_a_held_slot_is_retried_quickly_and_the_wait_is_visible(
    catalog_dsn: str, fresh_topics, tmp_path: Path
) -> None:
    settings, slot, log, port, holder, holder_pid = await _slot_held_after_kill9(
        catalog_dsn, fresh_topics, tmp_path
    )
    proc = start_subprocess(settings, log, WALDUCK_METRICS_PORT=str(port))
    try:
        await until(
            "waiting metric", lambda: (metric(port, "walduck_connector_slot_waiting_seconds") or 0) > 0.5, 20
        )
        assert active_pid(catalog_dsn, slot) == holder_pid
        assert (metric(port, "walduck_connector_slot_busy_total") or 0) >= 2
        await holder.close()
        taken = await until(
            "connector took the released slot",
            lambda: active_pid(catalog_dsn, slot) not in (None, holder_pid),
            10,
        )
        await until(
            "waiting metric back to 0", lambda: metric(port, "walduck_connector_slot_waiting_seconds") == 0, 5
        )
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"[failover] slot taken {taken:.2f} s after its holder closed")
    # the 0.2 s retry, not the reconnect backoff (0.5 s doubling to 30 s)
    assert taken < 1.5, taken


async def test_takeover_terminates_a_stale_walsender(catalog_dsn: str, fresh_topics, tmp_path: Path) -> None:
    settings, slot, log, port, holder, holder_pid = await _slot_held_after_kill9(
        catalog_dsn, fresh_topics, tmp_path
    )
    started = time.monotonic()
    proc = start_subprocess(settings, log, WALDUCK_METRICS_PORT=str(port), WALDUCK_SLOT_TAKEOVER_AFTER="1.0")
    try:
        await until(
            "connector took the slot over",
            lambda: active_pid(catalog_dsn, slot) not in (None, holder_pid),
            15,
        )
        took = time.monotonic() - started
        assert metric(port, "walduck_connector_slot_takeovers_total") == 1
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            gone = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [holder_pid]
            ).fetchone()
        assert gone == (0,), "the stale walsender is still there"
    finally:
        proc.terminate()
        proc.wait(30)
        with contextlib.suppress(Exception):
            await holder.close()
    print(f"[failover] stale walsender terminated, slot streaming {took:.2f} s after the connector started")
    assert took < 8, took
