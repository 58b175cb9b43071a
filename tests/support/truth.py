"""Independent truth for end-to-end tests: PostgreSQL's visible partitions + the Parquet files themselves."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import psycopg
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sinks.context.naming import sanitize_view_name
from stack.local import Stack
from stack.procs import component_env
from walduck.catalog_reader import storage_targets, visible_partitions
from walduck.locations import partition_location

ADMIN = "timestore:admin,timestore:sql:read,timestore:read"


@dataclass(frozen=True)
class Truth:
    slug: str
    view: str
    partitions: int
    rows: int
    value_sum: float


def truth_from_postgres(stack: Stack) -> dict[str, Truth]:
    """Per dataset: visible partitions, row count and sum(value) read straight from the Parquet files."""
    s = stack.settings
    with psycopg.connect(s.pg_dsn) as conn:
        visible = visible_partitions(conn, s.catalog_schema)
        targets = storage_targets(conn, s.catalog_schema)
        slugs = dict(conn.execute(f'SELECT id, slug FROM "{s.catalog_schema}".datasets').fetchall())
    out: dict[str, Truth] = {}
    acc: dict[str, list[float]] = {did: [0, 0, 0.0] for did in slugs}
    for (did, _shard), parts in visible.items():
        for row in parts.values():
            path = partition_location(targets[row["storage_target_id"]], row["file_path"], s.storage_root)
            table = pq.read_table(path, columns=["value"])
            acc[did][0] += 1
            acc[did][1] += table.num_rows
            acc[did][2] += float(pc.sum(table["value"]).as_py() or 0.0)
    for did, (parts_n, rows, total) in acc.items():
        out[did] = Truth(slugs[did], sanitize_view_name(slugs[did]), int(parts_n), int(rows), total)
    return out


def assert_sql_matches_truth(stack: Stack, truth: dict[str, Truth], min_lsn: int | None = None) -> int:
    """count(*) and sum(value) through /sql/read equal the files' for every dataset; returns rows checked."""
    checked = 0
    for did, t in truth.items():
        resp = stack.read(
            f'SELECT count(*) AS n, coalesce(sum(value), 0) AS s FROM timestore."{t.view}"',
            min_lsn=min_lsn,
            scopes=ADMIN,
        )
        assert resp.status_code == 200, f"{t.slug}: {resp.status_code} {resp.text[:300]}"
        row = resp.json()["rows"][0]
        assert row["n"] == t.rows, f"{t.slug} ({did}): {row['n']} rows via SQL, {t.rows} in files"
        assert abs(float(row["s"]) - t.value_sum) <= 1e-6 * max(1.0, abs(t.value_sum)), (
            f"{t.slug}: sum {row['s']} via SQL, {t.value_sum} in files"
        )
        checked += t.rows
    return checked


def run_verify(stack: Stack) -> subprocess.CompletedProcess[str]:
    env = component_env(stack.settings, WALDUCK_CONTEXT_SERVICE_URL=stack.base_url, **stack.extra_env)
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", "verify", "--url", stack.base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def deltas_replayed(stack: Stack) -> dict[tuple[str, str], dict[str, dict]]:
    """Every delta on the deltas topic, replayed into a plain dict by the reference consumer."""
    from aiokafka import TopicPartition

    from support.reference_consumer import replay
    from walduck.deltas import Delta
    from walduck.kafka_readers import committed_reader
    from walduck.kafka_security import start_client

    s = stack.settings
    consumer = committed_reader(s)
    await start_client(consumer, s)
    try:
        tps = [TopicPartition(s.deltas_topic, p) for p in range(s.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deltas: list[Delta] = []
        done = {tp for tp in tps if ends[tp] == 0}
        while len(done) < len(tps):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                deltas.extend(Delta.from_bytes(r.value) for r in records)
                if records and records[-1].offset + 1 >= ends[tp]:
                    done.add(tp)
        return replay(deltas)
    finally:
        await consumer.stop()


def visible_from_postgres(stack: Stack) -> dict[tuple[str, str], dict[str, dict]]:
    s = stack.settings
    with psycopg.connect(s.pg_dsn) as conn:
        return {key: parts for key, parts in visible_partitions(conn, s.catalog_schema).items() if parts}


async def assert_stack_matches_postgres(stack: Stack, min_datasets: int, fields: tuple[str, ...] = ()) -> int:
    """Once ``stack`` caught up: its ``/sql/read`` answers equal the Parquet truth (at least ``min_datasets``
    datasets), and every delta on the deltas topic, replayed, equals PostgreSQL's visible partitions per day
    shard (ids, and the values of ``fields``). The rows compared through SQL."""
    import asyncio

    await asyncio.to_thread(stack.wait_caught_up, None, 120)
    truth = await asyncio.to_thread(truth_from_postgres, stack)
    assert len(truth) >= min_datasets
    rows = await asyncio.to_thread(assert_sql_matches_truth, stack, truth)
    assert rows > 0
    replayed = await deltas_replayed(stack)
    expected = await asyncio.to_thread(visible_from_postgres, stack)
    assert set(replayed) == set(expected), "shards differ between deltas and PostgreSQL"
    for key, parts in expected.items():
        got = replayed[key]
        assert set(got) == set(parts), f"{key}: partition ids differ"
        for pid, row in parts.items():
            for field in fields:
                assert got[pid][field] == row[field], f"{key} {pid} {field}"
    return rows
