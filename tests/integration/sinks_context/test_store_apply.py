"""Deltas applied to a real DuckDB context over real Parquet files; queries through reader()."""

from __future__ import annotations

from datetime import timedelta

import pyarrow.parquet as pq
import pytest

from sinks.service.admin_snapshot import admin_snapshot
from walduck import metrics


def _count_sum(store, dataset_id, start=None, end=None):
    sql, warnings = store.relation_sql(dataset_id, start, end)
    with store.reader() as cur:
        count, total = cur.execute(f"SELECT count(*), sum(value) FROM ({sql}) t").fetchone()
    return count, total, warnings


def test_counts_and_sums_equal_the_files(store, factory, apply):
    apply(factory.create_dataset(0, "obs"))
    files = [factory.write_file("obs", h, 10 + h) for h in range(5)]
    assert apply(factory.delta(0, "ds-obs", upserts=files))
    expect_rows = sum(f["row_count"] for f in files)
    expect_sum = sum(
        sum(pq.read_table(factory.root / f["file_path"]).column("value").to_pylist()) for f in files
    )
    count, total, warnings = _count_sum(store, "ds-obs")
    assert (count, total, warnings) == (expect_rows, expect_sum, [])
    (ds,) = store.datasets()
    assert (ds.view_name, ds.partition_count, ds.total_rows) == ("obs", 5, expect_rows)
    assert ds.columns == [("ts", "TIMESTAMP"), ("value", "DOUBLE")]
    assert ds.timestamp_column == "ts"
    assert ds.metadata["iam"]["readScopes"] == ["timestore:read"]
    assert ds.partition_keys == ["window"]
    store.refresh_views(force=True)  # the consumer does this between batches
    with store.reader() as cur:
        assert cur.execute("SELECT count(*), sum(value) FROM timestore.obs").fetchone() == (
            expect_rows,
            expect_sum,
        )
        assert cur.execute("SELECT total_rows FROM timestore_runtime.datasets").fetchone() == (expect_rows,)
        assert cur.execute("SELECT count(*) FROM timestore_runtime.partitions").fetchone() == (5,)
        assert cur.execute("SELECT list(column_name) FROM timestore_runtime.columns").fetchone() == (
            ["ts", "value"],
        )


def test_time_pruning_touches_only_overlapping_files(store, factory, apply):
    apply(factory.create_dataset(0, "obs"))
    files = [factory.write_file("obs", h, 10) for h in range(10)]
    apply(factory.delta(0, "ds-obs", upserts=files))
    from walduck.timeutil import parse_iso

    start = parse_iso(files[3]["start_time"])
    end = parse_iso(files[4]["end_time"])
    sql, _ = store.relation_sql("ds-obs", start, end)
    assert sql.count(".parquet") == 2
    count, _, _ = _count_sum(store, "ds-obs", start, end)
    assert count == 20
    empty_sql, _ = store.relation_sql("ds-obs", start + timedelta(days=30), None)
    with store.reader() as cur:
        assert cur.execute(f"SELECT count(*) FROM ({empty_sql}) t").fetchone() == (0,)


def test_duplicate_delta_dropped(store, factory, apply):
    apply(factory.create_dataset(0, "obs"))
    delta = factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", 0, 7)])
    before = metrics.DELTAS_APPLIED.labels(result="duplicate")._value.get()
    assert apply(delta) is True
    # same delta again at a later deltas offset (producer retry): src offsets say duplicate
    assert apply(delta) is False
    # same deltas offset again (consumer re-delivery)
    assert store.apply(delta, 0, apply.offsets[0]) is False
    assert metrics.DELTAS_APPLIED.labels(result="duplicate")._value.get() == before + 2
    assert _count_sum(store, "ds-obs")[0] == 7


def test_one_window_many_datasets_all_applied(store, factory, apply):
    """The compactor writes one delta per dataset per window, all naming the window's offset range:
    each must apply once (regression: deduplicating per source partition alone dropped all but the first)."""
    import dataclasses

    apply(factory.create_dataset(0, "obs"))
    apply(factory.create_dataset(0, "met"))
    first = factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", 0, 3)])
    second = dataclasses.replace(
        factory.delta(0, "ds-met", upserts=[factory.write_file("met", 0, 4)]),
        src_offset_from=first.src_offset_from,
        src_offset_to=first.src_offset_to,
    )
    assert apply(first) is True
    assert apply(second) is True
    assert _count_sum(store, "ds-obs")[0] == 3
    assert _count_sum(store, "ds-met")[0] == 4
    # a re-delivery of either is still dropped
    assert apply(first) is False
    assert apply(second) is False


def test_additive_schema_null_fill(store, factory, apply):
    apply(factory.create_dataset(0, "obs"))
    old = factory.write_file("obs", 0, 5)
    apply(factory.delta(0, "ds-obs", upserts=[old]))
    new_sv = {"id": "dsv-obs-2", "dataset_id": "ds-obs", "version": 2, "schema": factory_schema_v2()}
    new = factory.write_file("obs", 1, 4, with_site=True)
    apply(factory.delta(0, "ds-obs", upserts=[new], schema_versions=[new_sv]))
    sql, warnings = store.relation_sql("ds-obs")
    assert warnings == []
    store.refresh_views(force=True)  # the consumer does this between batches
    with store.reader() as cur:
        rows = cur.execute(
            f"SELECT count(*), count(site), count(*) FILTER (site IS NULL) FROM ({sql}) t"
        ).fetchone()
        assert rows == (9, 4, 5)
        assert cur.execute("SELECT count(site) FROM timestore.obs").fetchone() == (4,)
    assert store.dataset("ds-obs").columns[-1] == ("site", "VARCHAR")


def factory_schema_v2():
    v1 = [{"name": "ts", "type": "timestamp"}, {"name": "value", "type": "double"}]
    return {"fields": [*v1, {"name": "site", "type": "string"}]}


def test_missing_file_skipped_with_warning(store, factory, apply):
    apply(factory.create_dataset(0, "obs"))
    files = [factory.write_file("obs", h, 3) for h in range(3)]
    apply(factory.delta(0, "ds-obs", upserts=files))
    (factory.root / files[1]["file_path"]).unlink()
    before = metrics.SKIPPED_PARTITIONS._value.get()
    count, _, warnings = _count_sum(store, "ds-obs")
    assert count == 6
    assert len(warnings) == 1 and files[1]["id"] in warnings[0] and "object not found" in warnings[0]
    assert metrics.SKIPPED_PARTITIONS._value.get() == before + 1
    for f in (files[0], files[2]):
        (factory.root / f["file_path"]).unlink()
    count, _, warnings = _count_sum(store, "ds-obs")
    assert count == 0 and any("No readable partitions" in w for w in warnings)


def test_compaction_swap_and_delete_dataset(store, factory, apply):
    apply(factory.create_dataset(1, "obs"))
    files = [factory.write_file("obs", 0, 5) for _ in range(4)]
    apply(factory.delta(1, "ds-obs", upserts=files))
    compacted = factory.write_file("obs", 0, 20)
    apply(factory.delta(1, "ds-obs", upserts=[compacted], deletes=[f["id"] for f in files]))
    assert store.dataset("ds-obs").partition_count == 1
    assert _count_sum(store, "ds-obs")[0] == 20
    apply(factory.delta(1, "ds-obs", dataset={"id": "ds-obs", "deleted": True}))
    assert store.datasets() == []
    store.refresh_views(force=True)  # the consumer does this between batches
    with store.reader() as cur:
        assert cur.execute("SELECT count(*) FROM wd.partitions").fetchone() == (0,)


def test_progress_and_heartbeats(store, factory, apply):
    from walduck.deltas import DeltaKind

    assert store.applied_lsn() == 0
    hb0 = factory.delta(0, None, kind=DeltaKind.HEARTBEAT)
    hb1 = factory.delta(1, None, kind=DeltaKind.HEARTBEAT)
    apply(hb0)
    assert store.applied_lsn() == 0  # shard 1 has applied nothing
    apply(hb1)
    assert store.applied_lsn() == min(hb0.lsn_to, hb1.lsn_to)
    prog = store.progress()
    assert prog[1].applied_lsn == hb1.lsn_to and prog[1].deltas_offset == 0
    assert prog[0].staleness_s is not None and prog[0].staleness_s < 5
    snap = admin_snapshot(store)
    assert snap["shards"][1]["appliedLsn"] == f"0/{hb1.lsn_to:X}"


@pytest.mark.asyncio
async def test_wait_for_lsn(store, factory, apply):
    import asyncio

    from walduck.deltas import DeltaKind

    assert await store.wait_for_lsn(1, 0.05) is False
    hb0, hb1 = (
        factory.delta(0, None, kind=DeltaKind.HEARTBEAT),
        factory.delta(1, None, kind=DeltaKind.HEARTBEAT),
    )

    async def later():
        await asyncio.sleep(0.05)
        await asyncio.to_thread(apply, hb0)
        await asyncio.to_thread(apply, hb1)

    task = asyncio.create_task(later())
    assert await store.wait_for_lsn(hb0.lsn_to, 2.0) is True
    await task


def test_slug_collision_reported(store, factory, apply):
    apply(factory.create_dataset(0, "a-b"))
    apply(factory.create_dataset(1, "a_b"))
    views = {v.slug: v for v in store.datasets()}
    assert views["a-b"].view_name == views["a_b"].view_name == "a_b"
    assert views["a-b"].collision and views["a_b"].collision
    assert views["a-b"].alias_warning and views["a_b"].alias_warning is None
    snap = admin_snapshot(store)
    assert any("a-b, a_b" in w for w in snap["warnings"])
    assert [v.slug for v in store.resolve_relation("a_b")] == ["a_b", "a-b"]
    # identifiers are case-insensitive in DuckDB (and so in Timestore's views)
    assert sorted(v.slug for v in store.resolve_relation("A_B")) == ["a-b", "a_b"]
    assert store.resolve_relation("nope") == []


def test_restart_resumes_without_rebuild(ctx_settings, factory):
    from sinks.context.store import ContextStore

    total_before = _rebuild_total()
    s1 = ContextStore(*ctx_settings)
    s1.open()
    offs = {0: -1}
    for d in [
        factory.create_dataset(0, "obs"),
        factory.delta(0, "ds-obs", upserts=[factory.write_file("obs", 0, 9)]),
    ]:
        offs[0] += 1
        assert s1.apply(d, 0, offs[0])
    s1.close()
    s2 = ContextStore(*ctx_settings)
    s2.open()
    try:
        assert s2.progress()[0].deltas_offset == offs[0]
        assert _count_sum(s2, "ds-obs")[0] == 9
        with s2.reader() as cur:
            assert cur.execute("SELECT count(*) FROM timestore.obs").fetchone() == (9,)
        assert _rebuild_total() == total_before
    finally:
        s2.close()


def _rebuild_total() -> float:
    return sum(
        sample.value
        for metric in metrics.REBUILDS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def test_reader_is_sandboxed(store):
    import duckdb

    with store.reader() as cur, pytest.raises(duckdb.Error):
        cur.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    with store.reader() as cur, pytest.raises(duckdb.Error):
        cur.execute("SET enable_external_access = true")


def test_readers_share_the_parquet_footer_cache_and_see_rewritten_files(store, factory, apply):
    """The footer cache is on for every reader cursor (a per-connection SET on the instance would not reach
    them), and a file rewritten in place is read again, not served from stale cached metadata."""
    import pyarrow as pa

    apply(factory.create_dataset(0, "obs"))
    f = factory.write_file("obs", 0, 10)
    apply(factory.delta(0, "ds-obs", upserts=[f]))
    for _ in range(2):
        with store.reader() as cur:
            assert cur.execute("SELECT current_setting('parquet_metadata_cache')").fetchone() == (True,)
        assert _count_sum(store, "ds-obs")[:2] == (10, sum(float(i) for i in range(10)))
    path = factory.root / f["file_path"]
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table, table]), path)
    assert _count_sum(store, "ds-obs")[:2] == (30, 3 * sum(float(i) for i in range(10)))


def test_readers_never_see_a_half_applied_compaction(store, factory, apply):
    """20 reader threads query while compaction deltas (delete N, insert 1) stream in: totals never change."""
    import threading

    apply(factory.create_dataset(0, "obs"))
    files = [factory.write_file("obs", 0, 10) for _ in range(8)]
    apply(factory.delta(0, "ds-obs", upserts=files))
    total = 80
    # pre-write every generation's file: generation g = 8 // 2**g files of 80 / count rows each
    generations = []
    current = files
    for _ in range(30):
        n = 4 if len(current) == 8 else 8
        new = [factory.write_file("obs", 0, total // n) for _ in range(n)]
        generations.append((new, [f["id"] for f in current]))
        current = new
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                with store.reader() as cur:
                    idx = cur.execute(
                        "SELECT sum(row_count), count(*) FROM timestore_runtime.partitions WHERE dataset_slug = 'obs'"
                    ).fetchone()
                seen.append((int(idx[0]), int(idx[1])))
                sql, _ = store.relation_sql("ds-obs")
                with store.reader() as cur:
                    assert cur.execute(f"SELECT count(*) FROM ({sql}) t").fetchone() == (total,)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(20)]
    for t in threads:
        t.start()
    for new, old_ids in generations:
        apply(factory.delta(0, "ds-obs", upserts=new, deletes=old_ids))
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[:3]
    assert len(seen) > 20
    assert {s[0] for s in seen} == {total}
    assert {s[1] for s in seen} <= {4, 8}


def test_delete_by_dataset_and_a_partition_moving_between_datasets(store, factory, apply) -> None:
    """Partition deletes are restricted to the delta's dataset (zone maps; docs/performance.md, "apply"): a
    partition re-homed to another dataset appears there at once and leaves its old dataset with that
    dataset's own delta, in either order; unrelated datasets' rows are never touched."""
    apply(factory.create_dataset(0, "a"))
    apply(factory.create_dataset(0, "b"))
    apply(factory.create_dataset(1, "c"))
    moving = factory.write_file("a", 1, 2)
    stay_a = factory.write_file("a", 2, 3)
    stay_c = factory.write_file("c", 1, 4)
    apply(factory.delta(0, "ds-a", upserts=[moving, stay_a]))
    apply(factory.delta(1, "ds-c", upserts=[stay_c]))
    moved = {**moving, "dataset_id": "ds-b", "manifest_id": "dm-b"}
    apply(factory.delta(0, "ds-b", upserts=[moved]))
    assert (store.dataset("ds-a").total_rows, store.dataset("ds-b").total_rows) == (5, 2)
    apply(factory.delta(0, "ds-a", deletes=[moving["id"]]))
    assert (store.dataset("ds-a").total_rows, store.dataset("ds-b").total_rows) == (3, 2)
    # upserting an existing partition replaces its row (no duplicate); a delete names only its dataset's rows
    apply(factory.delta(0, "ds-a", upserts=[{**stay_a, "row_count": 30}]))
    apply(factory.delta(1, "ds-c", deletes=[stay_a["id"]]))
    assert store.dataset("ds-a").total_rows == 30 and store.dataset("ds-c").total_rows == 4
    with store.reader() as cur:
        ids = [r[0] for r in cur.execute("SELECT id FROM wd.partitions ORDER BY id").fetchall()]
    assert sorted(ids) == sorted({moving["id"], stay_a["id"], stay_c["id"]}) and len(ids) == 3
