"""``walduck bench connector``: change records/s decoded from pgoutput and acknowledged by Kafka.

Two pgoutput slots are created at (nearly) the same LSN before the workload: the connector's and the
baseline's. The workload (bulk COPY of partitions) is committed first; then, on the same WAL:

* baseline: Debian's ``pg_recvlogical`` streams its slot (``proto_version=1``, same publication) to
  /dev/null and exits at the end LSN (``--endpos``);
* walduck: ``walduck connector run`` (snapshot mode ``never``) streams its slot to Kafka; done when the
  slot's ``confirmed_flush_lsn`` (confirmed only after Kafka acknowledged) reaches the end LSN;
* Debezium (issue 18; ``--no-debezium`` skips it): the Debezium PostgreSQL connector in Kafka Connect
  standalone (``stack/services/debezium.py``: pgoutput, JSON converter without schemas, ``snapshot.mode=no_data``,
  the throughput settings listed there) streams a third slot created at the same point into its per-table
  topics; done when every row change is in Kafka: Connect confirms the slot only after the producer's acks and
  an offset flush (1 s), so the run waits for the slot to reach the end LSN and takes the first moment its
  topics held the final record count (polled every 0.1 s) as the end.

records/s = change records the connector wrote to the changes topic / wall time; the baseline decodes the
same WAL, so the same record count is used for it.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import time

import orjson
import psycopg

from stack.bench.env import BenchServices, ScenarioEnv, scenario_env
from stack.bench.pipeline import (
    component_pid,
    confirmed_flush_lsn,
    cpu_seconds,
    make_stack,
    pg_bin,
    slot_active,
    slot_pid,
    topic_records,
    wait_for,
)
from stack.bench.report import Result
from stack.local import Stack
from stack.services.debezium import DEBEZIUM_VERSION, THROUGHPUT, DebeziumSource, LocalDebezium
from stack.services.kafka import KAFKA_VERSION
from walduck.catalog_tables import PUBLISHED_TABLES
from walduck.lsn import format_lsn, parse_lsn
from walduck.timeutil import instant_micros


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _or_na(seconds: float | None) -> float | str:
    return "n/a" if seconds is None else seconds


def run_connector(
    services: BenchServices,
    partitions: int,
    datasets: int,
    timeout: float,
    debezium: bool = True,
    latency_rate: float = 200.0,
    latency_s: float = 15.0,
) -> Result:
    result = Result("connector", {"partitions": partitions, "datasets": datasets, "debezium": debezium})
    with scenario_env(services, "connector", topics=True) as env:
        stack = make_stack(env, WALDUCK_CONNECTOR_SNAPSHOT_MODE="never")
        base_slot = f"{env.settings.slot_name}_base"
        dbz_slot = f"{env.settings.slot_name}_dbz"
        try:
            with psycopg.connect(env.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [base_slot])
                if debezium:
                    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [dbz_slot])
            load = env.bulk_load(datasets=datasets, partitions=partitions, files="synthetic")
            with psycopg.connect(env.dsn, autocommit=True) as conn:
                end_lsn = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
            result.notes.append(
                f"workload: bulk COPY of {load.partitions:,} partitions / {load.manifests:,} manifests / "
                f"{load.datasets} datasets in {load.elapsed_s:.1f} s; end LSN {format_lsn(end_lsn)}"
            )

            # baseline: pg_recvlogical to /dev/null up to the end LSN
            cmd = [
                pg_bin("pg_recvlogical"),
                "-d",
                env.dsn,
                "-S",
                base_slot,
                "--start",
                "-o",
                "proto_version=1",
                "-o",
                f"publication_names={env.settings.publication_name}",
                "-E",
                format_lsn(end_lsn),
                "--no-loop",
                "-f",
                "/dev/null",
            ]
            kafka_pid = services.manager.status().get("kafka", {}).get("pid")
            kafka_cpu0 = cpu_seconds(kafka_pid)
            children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # the walsender's CPU: sampled from /proc while it serves the baseline (it exits with it)
            sender = sender_cpu0 = sender_cpu = None
            while proc.poll() is None:
                if sender is None:
                    sender = slot_pid(env.dsn, base_slot)
                    sender_cpu0 = cpu_seconds(sender)
                sender_cpu = cpu_seconds(sender) or sender_cpu
                if time.monotonic() - started > timeout:
                    proc.kill()
                    raise TimeoutError(f"pg_recvlogical still running after {timeout:.0f} s")
                time.sleep(0.02)
            base_s = time.monotonic() - started
            if proc.returncode != 0:
                raise RuntimeError(f"pg_recvlogical failed ({proc.returncode}): {proc.stderr.read()[-500:]}")  # type: ignore[union-attr]
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            base_cpu = {
                "pg_recvlogical": (children1.ru_utime + children1.ru_stime)
                - (children0.ru_utime + children0.ru_stime),
                "walsender": _delta(sender_cpu0, sender_cpu),
                "Kafka broker": _delta(kafka_cpu0, cpu_seconds(kafka_pid)),
            }

            # walduck connector: until its slot confirmed the end LSN (after Kafka acks). Streaming time
            # starts when the slot turns active (START_REPLICATION sent), so the Python process start-up
            # (~1-2 s of imports, Kafka metadata) is reported apart, as pg_recvlogical's is ~10 ms.
            started = time.monotonic()
            stack.start(("connector",))
            try:
                wait_for(lambda: slot_active(env.dsn, env.settings.slot_name), timeout, 0.02)
                streaming = time.monotonic()
                connector_pid = component_pid(stack, "connector")
                sender = slot_pid(env.dsn, env.settings.slot_name)
                cpu0 = [cpu_seconds(p) for p in (connector_pid, sender, kafka_pid)]
                wait_for(
                    lambda: confirmed_flush_lsn(env.dsn, env.settings.slot_name) >= end_lsn, timeout, 0.05
                )
                cpu1 = [cpu_seconds(p) for p in (connector_pid, sender, kafka_pid)]
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\n{stack.logs()}") from None
            done_at = time.monotonic()
            ours_s = done_at - streaming
            startup_s = streaming - started
            records = topic_records(env.settings, env.settings.changes_topic, env.settings.topic_partitions)
            ours_rate = records / ours_s
            base_rate = records / base_s
            ratio = ours_rate / base_rate if base_rate else float("nan")
            result.add("walduck connector records/s (pgoutput -> Kafka acked)", ours_rate, "rec/s", base_rate)
            result.add("ratio to pg_recvlogical", ratio, "×", goal="≥ 0.5×", ok=ratio >= 0.5)
            result.add("walduck connector streaming time", ours_s, "s", base_s)
            result.add("walduck connector process start-up (not in the rate)", startup_s, "s")
            result.add("records/s including start-up", records / (ours_s + startup_s), "rec/s", base_rate)
            result.add("change records in Kafka", records, "")
            # where the CPU went during each streaming run (2 cores: the pair must share them)
            ours_cpu = dict(
                zip(("walduck connector", "walsender", "Kafka broker"), map(_delta, cpu0, cpu1), strict=True)
            )
            for name, seconds in ours_cpu.items():
                result.add(f"CPU seconds during walduck's run: {name}", _or_na(seconds), "s")
            for name, seconds in base_cpu.items():
                result.add(f"CPU seconds during the baseline: {name}", _or_na(seconds), "s")
            conn_cpu = ours_cpu["walduck connector"]
            if conn_cpu is not None:
                result.notes.append(
                    f"the connector process was on CPU {conn_cpu / ours_s:.0%} of its streaming time "
                    f"({conn_cpu / records * 1e6:.1f} µs CPU per record); the walsender "
                    + (
                        f"{ours_cpu['walsender'] / ours_s:.0%}"
                        if ours_cpu["walsender"] is not None
                        else "n/a"
                    )
                    + " during walduck's run and "
                    + (
                        f"{base_cpu['walsender'] / base_s:.0%}"
                        if base_cpu["walsender"] is not None
                        else "n/a"
                    )
                    + " during the baseline's"
                )
            if debezium:
                stack.stop()  # the walduck connector is done: Debezium gets the cores to itself
                dbz_s, dbz_records, dbz_cpu = _run_debezium(env, dbz_slot, end_lsn, timeout, kafka_pid)
                dbz_rate = dbz_records / dbz_s
                # the same row changes of the same WAL: the ratio of the streaming times (walduck's rate above
                # also counts its heartbeat/watermark records, Debezium's heartbeats are off)
                vs = dbz_s / ours_s if ours_s else float("nan")
                result.add("Debezium records/s (pgoutput -> Kafka acked)", dbz_rate, "rec/s", base_rate)
                result.add("walduck / Debezium records/s", vs, "×", goal="≥ 1.5×", ok=vs >= 1.5)
                result.add("Debezium streaming time", dbz_s, "s", base_s)
                result.add("Debezium row-change records in Kafka", dbz_records, "")
                for name, seconds in dbz_cpu.items():
                    result.add(f"CPU seconds during Debezium's run: {name}", _or_na(seconds), "s")
                if dbz_cpu["Kafka Connect + Debezium"] is not None and conn_cpu is not None:
                    result.add(
                        "CPU µs per record: walduck connector",
                        conn_cpu / records * 1e6,
                        "µs",
                        goal="",
                        ok=None,
                    )
                    result.add(
                        "CPU µs per record: Kafka Connect + Debezium",
                        dbz_cpu["Kafka Connect + Debezium"] / dbz_records * 1e6,
                        "µs",
                    )
                result.notes.append(
                    "Debezium "
                    f"{DEBEZIUM_VERSION} in Kafka Connect {KAFKA_VERSION} standalone, settings changed from its "
                    f"defaults: {', '.join(f'{k}={v}' for k, v in THROUGHPUT.items())}; its records are one per row "
                    "change (walduck's changes topic also holds heartbeats/watermarks, counted in walduck's rate)"
                )
            stack.stop()  # the latency phase starts both connectors afresh, streaming live
            lat = run_latency(
                env, stack, _debezium(env, dbz_slot) if debezium else None, latency_rate, latency_s, timeout
            )
            for name, values in lat.items():
                label = f"{name}: commit -> readable in Kafka at {latency_rate:.0f} commits/s"
                result.add(f"{label}, p50", _pct(values, 0.5) * 1000, "ms")
                result.add(f"{label}, p99", _pct(values, 0.99) * 1000, "ms")
                result.add(f"{name}: row changes timed", len(values), "")
            if debezium and lat.get("Debezium") and lat.get("walduck"):
                p99 = _pct(lat["Debezium"], 0.99) / _pct(lat["walduck"], 0.99)
                result.add("Debezium p99 / walduck p99 latency", p99, "×")
            result.notes.append(
                f"latency: both connectors streaming live on their own slots while one writer commits "
                f"{latency_rate:.0f} one-row transactions/s for {latency_s:.0f} s; commit time (PostgreSQL's, in "
                "each record) -> the record read by one tailing consumer in the bench process (5 ms fetch wait)"
            )
            result.notes.append(
                "baseline column = pg_recvlogical (pgoutput proto 1, same publication, to /dev/null) on the same "
                "WAL from a slot created at the same point; walduck's streaming time runs from its slot turning "
                "active to the slot's confirmed_flush_lsn reaching the end LSN (every record acknowledged by "
                "Kafka, then confirmed)"
            )
        finally:
            stack.stop()
            with psycopg.connect(env.dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = ANY(%s) AND NOT active",
                    [[base_slot, dbz_slot]],
                )
    return result


def _debezium(env: ScenarioEnv, slot: str) -> LocalDebezium:
    """The bench's Debezium on ``slot`` (the same run dir, prefix and offsets each time it is made)."""
    source = DebeziumSource.from_dsn(
        env.dsn,
        slot=slot,
        publication=env.settings.publication_name,
        schema=env.settings.catalog_schema,
        tables=list(PUBLISHED_TABLES),
    )
    return LocalDebezium(
        env.work_dir / "debezium", env.settings.kafka_bootstrap, source, f"dbz{env.dbname[-6:]}"
    )


def _run_debezium(
    env: ScenarioEnv, slot: str, end_lsn: int, timeout: float, kafka_pid: int | None
) -> tuple[float, int, dict[str, float | None]]:
    """Debezium streams ``slot`` up to ``end_lsn``: (streaming seconds, row-change records, CPU seconds)."""
    dbz = _debezium(env, slot)
    counts: list[tuple[float, int]] = []

    def count() -> int:
        total = 0
        for topic in dbz.topics():
            with contextlib.suppress(Exception):  # a table with no change has no topic
                total += topic_records(env.settings, topic, dbz.partitions)
        return total

    dbz.start()
    try:
        wait_for(lambda: (dbz.check_alive(), slot_active(env.dsn, slot))[1], timeout, 0.05)
        streaming = time.monotonic()
        pid = dbz.pid()
        cpu0 = [cpu_seconds(p) for p in (pid, slot_pid(env.dsn, slot), kafka_pid)]
        sender = slot_pid(env.dsn, slot)

        def caught_up() -> bool:
            dbz.check_alive()
            counts.append((time.monotonic(), count()))
            return confirmed_flush_lsn(env.dsn, slot) >= end_lsn

        try:
            wait_for(caught_up, timeout, 0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"Debezium: {exc}; errors logged:\n{dbz.errors()[-3000:]}") from None
        final = count()
        cpu1 = [cpu_seconds(p) for p in (pid, sender, kafka_pid)]
        done_at = next((at for at, n in counts if n >= final), time.monotonic())
    finally:
        dbz.stop()
    names = ("Kafka Connect + Debezium", "walsender", "Kafka broker")
    return done_at - streaming, final, dict(zip(names, map(_delta, cpu0, cpu1), strict=True))


def _commit_micros(value: bytes, debezium: bool) -> int | None:
    """Commit time (µs since 1970) of a row change of ``datasets`` in either format; ``None`` otherwise."""
    doc = orjson.loads(value)
    if debezium:
        return doc.get("source", {}).get("ts_us")
    if doc.get("kind") != "change" or doc.get("table") != "datasets":
        return None
    return instant_micros(doc["commit_ts"])


def run_latency(
    env: ScenarioEnv, stack: Stack, dbz: LocalDebezium | None, rate: float, seconds: float, timeout: float
) -> dict[str, list[float]]:
    """Both connectors streaming live while one writer commits ``rate`` one-row transactions per second for
    ``seconds``: per row change, commit time -> the record readable in Kafka (one tailing consumer in this
    process, 5 ms fetch wait, reads both topics the same way), in seconds, by connector."""
    import asyncio
    import threading

    from aiokafka import TopicPartition

    from walduck.kafka_readers import committed_reader
    from walduck.kafka_security import start_client

    topics = {"walduck": env.settings.changes_topic}
    if dbz is not None:
        topics["Debezium"] = f"{dbz.topic_prefix}.{env.settings.catalog_schema}.datasets"
    stack.start(("connector",))
    if dbz is not None:
        dbz.start()
    wait_for(lambda: slot_active(env.dsn, env.settings.slot_name), timeout, 0.05)
    if dbz is not None:
        wait_for(lambda: (dbz.check_alive(), slot_active(env.dsn, dbz.source.slot))[1], timeout, 0.05)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT id FROM {env.settings.catalog_schema}.datasets ORDER BY id LIMIT 1"
        ).fetchone()
    assert row is not None, "the workload created no dataset"
    latencies: dict[str, list[float]] = {name: [] for name in topics}
    started, stop = threading.Event(), threading.Event()

    async def tail() -> None:
        consumer = committed_reader(env.settings, fetch_max_wait_ms=5)
        await start_client(consumer, env.settings)
        try:
            cluster = await consumer._client.fetch_all_metadata()
            tps = [
                TopicPartition(t, p) for t in topics.values() for p in cluster.partitions_for_topic(t) or ()
            ]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            started.set()
            name_of = {topic: name for name, topic in topics.items()}
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=50)
                now = time.time()
                for tp, msgs in batch.items():
                    name = name_of[tp.topic]
                    for msg in msgs:
                        commit = _commit_micros(msg.value, name == "Debezium")
                        if commit is not None:
                            latencies[name].append(now - commit / 1e6)
        finally:
            await consumer.stop()

    thread = threading.Thread(target=lambda: asyncio.run(tail()), daemon=True)
    thread.start()
    started.wait(60)
    n = int(rate * seconds)
    try:
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            t0 = time.monotonic()
            for i in range(n):
                conn.execute(
                    f"UPDATE {env.settings.catalog_schema}.datasets SET updated_at = now() WHERE id = %s",
                    [row[0]],
                )
                delay = t0 + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(len(v) < n for v in latencies.values()):
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
        stack.stop()
        if dbz is not None:
            dbz.stop()
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
