"""Context snapshots: a replica publishes its context, a new replica with an empty context boots from it and
follows the deltas from the offsets stored in it (issue 15, ``sinks/context/context_snapshot.py``).

Oracles: the publishing replica's own tables (a restore must reproduce them row for row), a replica that applied
every delta itself (publish under concurrent applies), and PostgreSQL (``walduck verify``) for the replica that
booted from a snapshot and followed the tail through real Kafka.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import sinks.context.build as build_module
from sinks.context import context_snapshot
from sinks.context.consumer import DeltaConsumer
from sinks.context.exceptions import ContextError
from sinks.context.store import ContextStore
from sinks.settings import SinkSettings
from sinks.verify import verify
from support.deltas_topic import produce_deltas
from support.obs_catalog import insert_obs_partition, obs_catalog_with_one_file
from walduck import metrics
from walduck.deltas import Delta

PUBLISHED = (
    "datasets",
    "schema_versions",
    "storage_targets",
    "partitions",
    "columns",
    "shard_progress",
    "src_offsets",
)


def _rows(store: ContextStore, table: str) -> list[tuple[Any, ...]]:
    with store.reader() as cur:
        return sorted(cur.execute(f"SELECT * FROM wd.{table}").fetchall(), key=repr)


def _restores(result: str) -> float:
    return metrics.CONTEXT_SNAPSHOT_RESTORES.labels(result=result)._value.get()


def _store(sink: Any, wd: Any, tmp: Path, name: str, **update: Any) -> ContextStore:
    s = ContextStore(sink.model_copy(update={"context_path": tmp / name / "context.duckdb", **update}), wd)
    s.open()
    return s


def _filled(ctx_settings: Any, factory: Any, tmp_path: Path, snapdir: Path) -> ContextStore:
    sink, wd = ctx_settings
    store = _store(sink, wd, tmp_path, "a", context_snapshot_dir=snapdir)
    offsets = {0: -1, 1: -1}

    def apply(delta: Delta) -> None:
        offsets[delta.src_partition] += 1
        store.apply(delta, delta.src_partition, offsets[delta.src_partition])

    apply(factory.create_dataset(0, "obs"))
    apply(factory.create_dataset(1, "wind"))
    for h in range(4):
        apply(factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", h, 3)]))
        apply(factory.delta(1, "ds-wind", upserts=[factory.write_file("wind", h, 2, with_site=True)]))
    for shard in (0, 1):
        store.mark_bootstrapped(shard)
    return store


def _published(ctx_settings: Any, factory: Any, tmp_path: Path) -> Path:
    """A snapshot of :func:`_filled`'s context published into ``tmp_path/snapshots`` (the replica closed)."""
    snapdir = tmp_path / "snapshots"
    a = _filled(ctx_settings, factory, tmp_path, snapdir)
    try:
        context_snapshot.publish(a._require(), snapdir, a.snapshot_fit())
    finally:
        a.close()
    return snapdir


def test_a_restore_reproduces_every_published_table(ctx_settings, factory, tmp_path) -> None:
    snapdir = tmp_path / "snapshots"
    a = _filled(ctx_settings, factory, tmp_path, snapdir)
    try:
        published = context_snapshot.publish(a._require(), snapdir, a.snapshot_fit())
        assert set(published.tables) == set(PUBLISHED)  # every wd table but the replica's rebuild history
        assert published.tables["partitions"] == 8
        expected = {t: _rows(a, t) for t in PUBLISHED}
    finally:
        a.close()
    before = _restores("ok")
    b = _store(*ctx_settings, tmp_path, "b", context_snapshot_dir=snapdir)
    try:
        assert _restores("ok") == before + 1
        assert {t: _rows(b, t) for t in PUBLISHED} == expected
        assert {s: (p.deltas_offset, p.applied_lsn, p.bootstrapped) for s, p in b.progress().items()} == {
            0: (4, expected["shard_progress"][0][2], True),
            1: (4, expected["shard_progress"][1][2], True),
        }
        assert b.dataset("ds-wind").total_rows == 8 and b.dataset("ds-obs").total_rows == 12
        sql, _ = b.relation_sql("ds-wind")
        with b.reader() as cur:
            assert cur.execute(f"SELECT count(*) FROM ({sql})").fetchone() == (8,)
    finally:
        b.close()


def test_a_snapshot_published_under_concurrent_applies_plus_its_tail_equals_the_replica(
    ctx_settings, factory, tmp_path
) -> None:
    """Each snapshot's stored offsets describe exactly its rows: restored, then given every delta past those
    offsets, it ends where the replica that applied everything ends (a snapshot whose progress were read in
    another transaction than its rows would skip deltas or hold rows twice)."""
    snapdir = tmp_path / "snapshots"
    sink, wd = ctx_settings
    a = _store(sink, wd, tmp_path, "a", context_snapshot_dir=snapdir)
    deltas = [factory.create_dataset(0, "obs")]
    files = [factory.write_file("obs", h % 24, 1) for h in range(120)]
    for i, f in enumerate(files):
        deltas.append(
            factory.delta(0, "ds-obs", upserts=[f], deletes=[files[i - 3]["id"]] if i % 4 == 3 else None)
        )
    a.apply(deltas[0], 0, 0)
    a.mark_bootstrapped(0)
    a.mark_bootstrapped(1)
    names: list[str] = []
    done = threading.Event()

    def publish_repeatedly() -> None:
        while not done.is_set():
            names.append(
                context_snapshot.publish(a._require(), snapdir, a.snapshot_fit(), keep=1000).manifest
            )

    publisher = threading.Thread(target=publish_repeatedly)
    publisher.start()
    try:
        for off, d in enumerate(deltas[1:], start=1):
            a.apply(d, 0, off)
    finally:
        done.set()
        publisher.join()
    final = _rows(a, "partitions")
    a.close()
    assert len(names) >= 3
    for i, name in enumerate([names[0], names[len(names) // 2], names[-1]]):
        (snapdir / "LATEST").write_text(name)
        b = _store(sink, wd, tmp_path, f"b{i}", context_snapshot_dir=snapdir)
        try:
            stored = b.progress()[0].deltas_offset
            assert stored >= 0
            for off in range(stored + 1, len(deltas)):
                assert b.apply(deltas[off], 0, off)
            assert _rows(b, "partitions") == final, f"snapshot {name} at offset {stored}"
        finally:
            b.close()


def test_a_corrupt_or_foreign_snapshot_is_refused_and_the_context_stays_empty(
    ctx_settings, factory, tmp_path
) -> None:
    snapdir = _published(ctx_settings, factory, tmp_path)
    sink, wd = ctx_settings
    before = _restores("incompatible")
    other = ContextStore(
        sink.model_copy(
            update={"context_path": tmp_path / "c" / "x.duckdb", "context_snapshot_dir": snapdir}
        ),
        wd.model_copy(update={"topic_partitions": 3}),
    )
    other.open()
    try:
        assert _restores("incompatible") == before + 1
        assert other.datasets() == [] and not any(p.bootstrapped for p in other.progress().values())
    finally:
        other.close()
    doc = context_snapshot.latest_manifest(snapdir)
    assert doc is not None
    obj = snapdir / "objects" / f"{doc['tables']['partitions']['object']}.parquet"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    before = _restores("corrupt")
    b = _store(sink, wd, tmp_path, "b", context_snapshot_dir=snapdir)
    try:
        assert _restores("corrupt") == before + 1
        assert b.datasets() == [] and not any(p.bootstrapped for p in b.progress().values())
    finally:
        b.close()


def test_a_context_that_holds_shards_is_never_overwritten(ctx_settings, factory, tmp_path) -> None:
    snapdir = _published(ctx_settings, factory, tmp_path)
    sink, wd = ctx_settings
    b = _store(sink, wd, tmp_path, "b")  # no snapshot directory: a context of its own
    b.apply(factory.create_dataset(0, "solo"), 0, 0)
    b.mark_bootstrapped(0)
    b.close()
    before = _restores("ok")
    b = _store(sink, wd, tmp_path, "b", context_snapshot_dir=snapdir)
    try:
        assert _restores("ok") == before
        assert [d.id for d in b.datasets()] == ["ds-solo"]
    finally:
        b.close()


def test_a_snapshot_directory_sql_could_read_is_refused(ctx_settings, tmp_path) -> None:
    sink, wd = ctx_settings
    inside = Path(wd.storage_root) / "snapshots"
    store = ContextStore(sink.model_copy(update={"context_snapshot_dir": inside}), wd)
    with pytest.raises(ContextError, match="SQL may read"):
        store.open()


def test_old_manifests_and_their_objects_are_collected(ctx_settings, factory, tmp_path) -> None:
    snapdir = tmp_path / "snapshots"
    a = _filled(ctx_settings, factory, tmp_path, snapdir)
    try:
        first = context_snapshot.publish(a._require(), snapdir, a.snapshot_fit())
        a.apply(factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", 9, 3)]), 0, 5)
        second = context_snapshot.publish(a._require(), snapdir, a.snapshot_fit())
    finally:
        a.close()
    assert len(list((snapdir / "manifests").glob("*.json"))) == 2
    assert (
        context_snapshot.collect_garbage(snapdir, keep=1, min_age_s=0) >= 2
    )  # the manifest + changed objects
    assert [m.name for m in (snapdir / "manifests").glob("*.json")] == [second.manifest]
    kept = {o.stem for o in (snapdir / "objects").glob("*.parquet")}
    doc = context_snapshot.latest_manifest(snapdir)
    assert doc is not None and doc["name"] == second.manifest != first.manifest
    assert kept == {t["object"] for t in doc["tables"].values()}


# --------------------------------------------------------------------------- through real Kafka and PostgreSQL
async def _run_until(store: ContextStore, cond: Any, limit_s: float = 30.0) -> DeltaConsumer:
    consumer = DeltaConsumer(store)
    task = asyncio.create_task(consumer.run())
    try:
        deadline = asyncio.get_running_loop().time() + limit_s
        while not cond(consumer):
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            assert not task.done(), task
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 30)
    return consumer


@pytest.mark.integration
async def test_a_replica_booted_from_a_snapshot_follows_the_tail_without_reading_postgresql(
    fresh_db, fresh_topics, factory, tmp_path, monkeypatch
):
    dsn, wd, p1 = await obs_catalog_with_one_file(fresh_db, fresh_topics, factory)
    snapdir = tmp_path / "snapshots"
    await produce_deltas(wd, [factory.create_dataset(0, "obs"), factory.delta(0, "ds-obs", upserts=[p1])])

    base = SinkSettings(
        view_refresh_interval_s=0.0, context_snapshot_dir=snapdir, context_snapshot_interval_s=60
    )
    a = ContextStore(base.model_copy(update={"context_path": tmp_path / "a" / "context.duckdb"}), wd)
    a.open()
    try:
        await _run_until(a, lambda c: a.progress()[0].bootstrapped)
        publisher = a.snapshot_publisher()
        assert publisher is not None
        assert publisher.publish_if_due() is not None
        assert publisher.publish_if_due() is None  # nothing changed since: not published again
    finally:
        a.close()

    # after the snapshot: p2 commits and its delta arrives
    p2 = factory.write_file("obs", 1, 4)
    insert_obs_partition(dsn, p2)
    await produce_deltas(wd, [factory.delta(0, "ds-obs", upserts=[p2])])

    def no_postgresql(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a replica seeded from a snapshot must not read the catalog")

    monkeypatch.setattr(build_module, "read_catalog", no_postgresql)
    rebuilt = metrics.REBUILDS.labels(scope="shard", result="ok")._value.get()
    b_sink = base.model_copy(update={"context_path": tmp_path / "b" / "context.duckdb"})
    b = ContextStore(b_sink, wd)
    b.open()
    try:
        assert sorted(r["partitionId"] for r in b.partition_index("ds-obs")) == [p1["id"]]
        consumer = await _run_until(b, lambda c: c.applied >= 1)
        assert consumer.applied == 1  # only the tail: the delta after the snapshot
        assert sorted(r["partitionId"] for r in b.partition_index("ds-obs")) == sorted([p1["id"], p2["id"]])
        assert metrics.REBUILDS.labels(scope="shard", result="ok")._value.get() == rebuilt
    finally:
        b.close()
    assert verify(wd, b_sink) == []


@pytest.mark.integration
async def test_a_stored_offset_past_the_partitions_end_rebuilds_the_shard_from_postgresql(
    fresh_db, fresh_topics, factory, tmp_path, caplog
):
    """A context (or a snapshot) made against another topic of the same name: its offsets are past this
    partition's end, so seeking there would skip this topic's deltas; the shard is built from PostgreSQL."""
    _, wd, _ = await obs_catalog_with_one_file(fresh_db, fresh_topics, factory)
    await produce_deltas(wd, [factory.create_dataset(0, "obs")])  # this topic holds one delta (end offset 1)
    sink = SinkSettings(view_refresh_interval_s=0.0, context_path=tmp_path / "a" / "context.duckdb")
    store = ContextStore(sink, wd)
    store.open()
    try:
        store.apply(factory.create_dataset(0, "old"), 0, 0)
        for off in range(1, 6):  # offsets of the other topic: up to 5
            store.apply(factory.delta(0, "ds-old", upserts=[factory.write_file("old", off, 1)]), 0, off)
        store.mark_bootstrapped(0)
        rebuilt = metrics.REBUILDS.labels(scope="shard", result="ok")._value.get()
        caplog.set_level("WARNING", logger="sinks.context.consumer")
        await _run_until(
            store, lambda c: metrics.REBUILDS.labels(scope="shard", result="ok")._value.get() > rebuilt
        )
        assert any("past the end offset" in r.getMessage() for r in caplog.records)
        assert [d.id for d in store.datasets()] == ["ds-obs"]  # PostgreSQL's, not the other topic's
        assert store.progress()[0].deltas_offset == 0  # E - 1 of this topic
    finally:
        store.close()
    assert verify(wd, sink) == []
