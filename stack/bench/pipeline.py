"""Helpers for the benchmarks that run the real components (``stack.local.Stack``) as child processes."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import httpx
import psycopg

from stack.bench.env import ScenarioEnv
from stack.local import Stack
from stack.services.kafka import quiet_client_logs
from walduck.config import WalduckSettings
from walduck.lsn import parse_lsn

SCOPES = "timestore:admin,timestore:sql:read,timestore:read"


def make_stack(env: ScenarioEnv, **extra_env: str) -> Stack:
    stack = Stack(
        env.settings,
        env.work_dir / "stack",
        # explicit open mode (benchmarks probe without scopes); the admin scope still guards /admin
        extra_env={
            "WALDUCK_QUERY_ADMIN_SCOPE": "timestore:admin",
            "WALDUCK_QUERY_IAM_OPEN": "true",
            **extra_env,
        },
    )
    stack.prepare()
    return stack


def confirmed_flush_lsn(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [slot]
        ).fetchone()
    return parse_lsn(row[0]) if row and row[0] else 0


def slot_active(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone()
    return bool(row and row[0])


def topic_records(settings: WalduckSettings, topic: str, partitions: int) -> int:
    """Records in ``topic`` (sum of end offsets minus beginning offsets over its ``partitions``)."""
    from aiokafka import TopicPartition

    from walduck.kafka_readers import committed_reader
    from walduck.kafka_security import start_client

    async def count() -> int:
        consumer = committed_reader(settings)
        await start_client(consumer, settings)
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            return sum(ends[tp] - begins[tp] for tp in tps)
        finally:
            await consumer.stop()

    with quiet_client_logs():
        return asyncio.run(count())


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS = VmHWM) of ``pid`` and its children's current RSS summed in."""
    cur = peak = 0
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cur, peak


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of ``pid`` so far (``None`` when it is gone or unknown)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def slot_pid(dsn: str, slot: str) -> int | None:
    """The walsender serving ``slot`` (``None`` while the slot is inactive)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot]
        ).fetchone()
    return None if row is None else row[0]


def component_pid(stack: Stack, name: str) -> int:
    comp = stack.components[name]
    assert comp.proc is not None
    # the component is `python -m stack.cli ...` itself (no shell in between)
    return comp.proc.pid


def scrape(url: str) -> dict[str, float]:
    """Prometheus text at ``url`` -> {'name{labels}': value}. The query service's ``/metrics`` needs the
    metrics (admin) scope; an error answer raises instead of reading as "no metrics"."""
    resp = httpx.get(url, timeout=10, headers={"x-iam-scopes": SCOPES})
    resp.raise_for_status()
    return parse_prometheus(resp.text)


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+)\s+(\S+)", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                continue
    return out


def query_log_lines(stack: Stack, *markers: str) -> dict[str, str]:
    """The query service's newest log line containing each of ``markers`` (without its time and level), read once."""
    found: dict[str, str] = {}
    for line in stack.components["query"].tail(10**9).splitlines():
        for marker in markers:
            if marker in line:
                found[marker] = line.split(" INFO ", 1)[-1]
    return found


def count_visible(stack: Stack, timeout: float = 30) -> int:
    resp = stack.read(
        "SELECT count(*) AS n FROM timestore_runtime.partitions", scopes=SCOPES, timeout=timeout
    )
    resp.raise_for_status()
    doc = resp.json()
    rows = doc.get("rows") or doc.get("data") or []
    first = rows[0]
    return int(first["n"] if isinstance(first, dict) else first[0])


def wait_for(predicate: object, timeout: float, interval: float = 0.1) -> float:
    """Seconds until ``predicate()`` is true; raises TimeoutError."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(interval)
    raise TimeoutError(f"not reached within {timeout:.0f} s")


def pg_bin(name: str) -> str:
    from stack.services.postgres import find_pg_bin

    found = find_pg_bin()
    candidate = (found / name) if found else Path("/usr/lib/postgresql/15/bin") / name
    if not os.access(candidate, os.X_OK):
        raise FileNotFoundError(f"{candidate} not found")
    return str(candidate)
