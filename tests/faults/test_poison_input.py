"""Scenario 4: malformed records injected into the changes and deltas topics (bad JSON, unknown version,
missing fields, a ~5 MB payload, tombstones) while a workload runs. Each lands in the DLQ topic with a reason,
the DLQ metrics count them, the stream keeps flowing and no good record is lost (truth check afterwards)."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from faults.faultkit import BackgroundWorkload, assert_zero_drift, metric_value
from stack.local import Stack

BIG = 5 * 1024 * 1024
TOPIC_MAX_BYTES = str(8 * 1024 * 1024)


def poison(kind: str) -> list[tuple[str, bytes | None]]:
    """(case, value) pairs of bad records for the changes (``kind="change"``) or deltas topic."""
    good_head = {"v": 1, "kind": "change" if kind == "change" else "partitions"}
    return [
        ("bad_json", b'{"v": 1, "kind": '),
        ("not_object", b"[1, 2, 3]"),
        ("unknown_version", orjson.dumps({**good_head, "v": 99})),
        ("missing_fields", orjson.dumps(good_head)),
        ("huge", b'{"v": 1, "pad": "' + b"x" * BIG + b'"}'),
        ("tombstone", None),
    ]


async def raise_max_message_bytes(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": TOPIC_MAX_BYTES})
                for t in topics
            ]
        )
    finally:
        await admin.close()


async def inject(bootstrap: str, topic: str, cases: list[tuple[str, bytes | None]], partitions: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=int(TOPIC_MAX_BYTES))
    await producer.start()
    try:
        for i, (case, value) in enumerate(cases):
            await producer.send_and_wait(
                topic, value=value, key=f"poison-{case}".encode(), partition=i % partitions
            )
    finally:
        await producer.stop()


async def read_dlq(bootstrap: str, topic: str, want: int, wait_s: float) -> list[dict[str, str]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        deadline = time.monotonic() + wait_s
        while len(found) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for msg in msgs:
                    headers = {k: v.decode(errors="replace") for k, v in msg.headers}
                    headers["_key"] = (msg.key or b"").decode(errors="replace")
                    headers["_size"] = str(len(msg.value or b""))
                    found.append(headers)
    finally:
        await consumer.stop()
    return found


async def test_poison_records_go_to_dlq_and_the_stream_keeps_flowing(make_stack) -> None:
    stack: Stack = await make_stack()
    s = stack.settings
    await raise_max_message_bytes(s.kafka_bootstrap, [s.changes_topic, s.deltas_topic])
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    workload = BackgroundWorkload(stack, seed=31, duration=12, rate=5).start()
    await asyncio.sleep(3)
    change_cases, delta_cases = poison("change"), poison("delta")
    await inject(s.kafka_bootstrap, s.changes_topic, change_cases, s.topic_partitions)
    await inject(s.kafka_bootstrap, s.deltas_topic, delta_cases, s.topic_partitions)
    summary = await asyncio.to_thread(workload.join, 120)
    report = await asyncio.to_thread(assert_zero_drift, stack, 180)

    want = len(change_cases) + len(delta_cases)
    dlq = await read_dlq(s.kafka_bootstrap, s.dlq_topic, want, wait_s=60)
    by_component: dict[str, list[dict[str, str]]] = {}
    for rec in dlq:
        by_component.setdefault(rec.get("component", "?"), []).append(rec)
    print(
        f"[faults] poison injected={want} dlq={len(dlq)} by_component="
        f"{ {k: sorted(r['_key'] for r in v) for k, v in by_component.items()} } commits={summary.commits} "
        f"rows_checked={report.rows_checked} drift=0"
    )
    for rec in dlq:
        assert rec.get("reason"), f"DLQ record without a reason: {rec}"
    compactor_keys = {r["_key"] for r in by_component.get("compactor", [])}
    context_keys = {r["_key"] for r in by_component.get("context", [])}
    for case, _ in change_cases:
        assert f"poison-{case}" in compactor_keys, f"changes poison {case!r} not in the DLQ: {by_component}"
    for case, _ in delta_cases:
        assert f"poison-{case}" in context_keys, f"deltas poison {case!r} not in the DLQ: {by_component}"

    huge = [r for r in dlq if r["_key"] == "poison-huge"]
    assert len(huge) == 2 and all(int(r["truncated_from"]) > BIG for r in huge), huge
    compactor_dlq = metric_value(
        f"http://127.0.0.1:{stack.compactor_metrics_port}/metrics",
        "walduck_dlq_records_total",
        {"component": "compactor"},
    )
    assert compactor_dlq is not None and compactor_dlq >= len(change_cases), compactor_dlq
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{stack.base_url}/metrics", headers={"x-iam-scopes": "timestore:admin"})
    text = resp.text
    context_dlq = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("walduck_dlq_records_total{") and 'component="context"' in line
    )
    assert context_dlq >= len(delta_cases), context_dlq
    # the stream still flows after the poison: a fresh commit becomes visible
    assert stack.components["compactor"].alive and stack.components["query"].alive
