"""Admin rebuild from the real PostgreSQL, with deltas applied while it reads (issue 15).

The forced interleaving: the context holds ``[p1]``; while the rebuild reads PostgreSQL, a transaction adds
``p2`` there and its delta is applied to the context; the rebuild then replaces the dataset's rows. A
rebuild that wrote its (older) snapshot over that delta lost ``p2`` for good (its offsets were stored).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import sinks.context.build as store_module  # the module that reads the catalog
from sinks.context.store import ContextStore
from sinks.service.admin_snapshot import admin_snapshot
from support.obs_catalog import insert_obs_partition, seed_obs_catalog
from walduck import metrics
from walduck.config import ContextMode

pytestmark = pytest.mark.integration


def _ids(store: ContextStore) -> list[str]:
    return [r["partitionId"] for r in store.partition_index("ds-obs")]


class _Offsets:
    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


@pytest.mark.parametrize("mode", [ContextMode.INCREMENTAL, ContextMode.FULL_SCAN])
@pytest.mark.parametrize("scope", ["dataset", "full"])
def test_delta_applied_during_the_rebuild_read_is_kept(
    fresh_db, factory, ctx_settings, monkeypatch, scope, mode
):
    dsn = fresh_db()
    seed_obs_catalog(dsn)
    sink, wd = ctx_settings
    wd = wd.model_copy(update={"pg_dsn": dsn, "context_mode": mode})
    store = ContextStore(sink, wd)
    store.open()
    offset = _Offsets()
    try:
        p1 = factory.write_file("obs", 0, 3)
        insert_obs_partition(dsn, p1)
        assert store.apply(factory.create_dataset(0, "obs"), 0, offset())
        assert store.apply(factory.delta(0, "ds-obs", upserts=[p1]), 0, offset())
        assert _ids(store) == [p1["id"]]

        p2 = factory.write_file("obs", 1, 4)
        real_read = store_module.read_catalog
        interleaved: list[str] = []

        def read_then_commit_and_apply(*args: Any, **kwargs: Any) -> Any:
            snap = real_read(*args, **kwargs)  # the rebuild's snapshot: without p2
            if interleaved:  # a later read (full-scan applies and replays read PostgreSQL too)
                return snap
            read_ids = {p["id"] for p in snap.partitions}
            if snap.partitions_table is not None:  # the bulk path (COPY -> Arrow)
                read_ids |= set(snap.partitions_table["id"].to_pylist())
            assert p1["id"] in read_ids and p2["id"] not in read_ids
            # p2 commits in PostgreSQL after the snapshot and its delta is applied by the consumer (another
            # thread) before the rebuild takes the write lock
            insert_obs_partition(dsn, p2)
            applier = threading.Thread(
                target=lambda: interleaved.append(
                    str(store.apply(factory.delta(0, "ds-obs", upserts=[p2]), 0, offset()))
                )
            )
            interleaved.append("started")
            applier.start()
            applier.join(30)
            assert interleaved == ["started", "True"], (
                "the delta apply did not complete during the rebuild read"
            )
            return snap

        monkeypatch.setattr(store_module, "read_catalog", read_then_commit_and_apply)
        store.rebuild("ds-obs" if scope == "dataset" else None, reason="test")
        monkeypatch.setattr(store_module, "read_catalog", real_read)
        assert interleaved == ["started", "True"]
        assert sorted(_ids(store)) == sorted([p1["id"], p2["id"]])
        assert store.dataset("ds-obs").total_rows == 7

        p3 = factory.write_file("obs", 2, 5)
        insert_obs_partition(dsn, p3)
        assert store.apply(factory.delta(0, "ds-obs", upserts=[p3]), 0, offset())
        assert sorted(_ids(store)) == sorted([p1["id"], p2["id"], p3["id"]])
        store.refresh_views(force=True)  # (the consumer does this between batches)
        with store.reader() as cur:
            assert cur.execute("SELECT count(*) FROM timestore.obs").fetchone() == (12,)
    finally:
        store.close()


def _rebuilds(scope: str, result: str) -> float:
    return metrics.REBUILDS.labels(scope=scope, result=result)._value.get()


def test_rebuilds_queue_merge_and_keep_their_last_result_across_restarts(
    fresh_db, factory, ctx_settings, monkeypatch
):
    dsn = fresh_db()
    seed_obs_catalog(dsn)
    sink, wd = ctx_settings
    # first: a catalog that does not exist → the rebuild fails; its error is kept
    broken = wd.model_copy(update={"pg_dsn": dsn.rsplit("/", 1)[0] + "/wd_no_such_db"})
    store = ContextStore(sink, broken)
    store.open()
    try:
        p1 = factory.write_file("obs", 0, 3)
        insert_obs_partition(dsn, p1)
        store.apply(factory.create_dataset(0, "obs"), 0, 0)
        store.apply(factory.delta(0, "ds-obs", upserts=[p1]), 0, 1)
        errors = _rebuilds("dataset", "error")
        with pytest.raises(psycopg.OperationalError):
            store.rebuild("ds-obs", reason="test-broken")
        assert _rebuilds("dataset", "error") == errors + 1
        entry = admin_snapshot(store)["datasets"][0]
        assert entry["lastRebuild"]["result"] == "error" and "wd_no_such_db" in entry["lastError"]
        assert entry["lastRebuild"]["reason"] == "test-broken"
    finally:
        store.close()

    store = ContextStore(sink, wd.model_copy(update={"pg_dsn": dsn}))
    store.open()
    try:
        entry = admin_snapshot(store)["datasets"][0]
        assert entry["lastRebuild"]["result"] == "error", "the failure was not kept across the restart"
        assert "wd_no_such_db" in entry["lastError"]

        # a rebuild blocked in its read: requests meanwhile are merged into one pending job; readers answer
        real_read = store_module.read_catalog
        entered, release = threading.Event(), threading.Event()
        reads: list[int] = []

        def slow_read(*args: Any, **kwargs: Any) -> Any:
            reads.append(1)
            entered.set()
            assert release.wait(30)
            return real_read(*args, **kwargs)

        monkeypatch.setattr(store_module, "read_catalog", slow_read)
        ok = _rebuilds("dataset", "ok")
        first = store.request_rebuild("ds-obs", "admin-1")
        assert entered.wait(10)
        merged = [store.request_rebuild("ds-obs", r) for r in ("admin-2", "admin-3", "admin-2")]
        snap = admin_snapshot(store)
        assert [
            (p["datasetId"], p["datasetSlug"], p["reason"], p["requests"])
            for p in snap["pendingInvalidations"]
        ] == [("ds-obs", "obs", "admin-2, admin-3", 3)]
        assert [r["datasetId"] for r in snap["runningRebuilds"]] == ["ds-obs"]
        with store.reader() as cur:  # sessions are not dropped nor blocked by a rebuild
            assert cur.execute("SELECT count(*) FROM timestore.obs").fetchone() == (3,)
        release.set()
        first.wait(30)
        merged[0].wait(30)
        assert store.wait_rebuilds(10)
        assert len(reads) == 2, "four requests must cost two reads of PostgreSQL"
        assert _rebuilds("dataset", "ok") == ok + 2
        snap = admin_snapshot(store)
        assert snap["pendingInvalidations"] == [] and snap["runningRebuilds"] == []
        entry = snap["datasets"][0]
        assert entry["lastRebuild"]["result"] == "ok" and entry["lastError"] is None
        assert entry["lastRebuild"]["reason"] == "admin-2, admin-3"
    finally:
        store.close()
    store = ContextStore(sink, wd.model_copy(update={"pg_dsn": dsn}))
    store.open()
    try:
        assert admin_snapshot(store)["datasets"][0]["lastRebuild"]["result"] == "ok"
    finally:
        store.close()


def test_bulk_path_builds_the_same_context_as_the_per_row_path(fresh_db, factory, ctx_settings, tmp_path):
    """COPY -> Arrow -> DuckDB (rebuild, full scan) equals the per-row path: every column of every partition,
    locations of local (custom root and default), s3 and absolute paths, metadata overrides, micro-seconds."""
    import json

    from sinks.settings import SinkSettings

    dsn = fresh_db()
    seed_obs_catalog(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO timestore.storage_targets (id, name, kind, config) VALUES"
            """ ('st-s3', 's3', 's3', '{"bucket": "b1"}'), ('st-root', 'root', 'local', '{"root": "/srv/x/"}')"""
        )
        conn.execute("INSERT INTO timestore.datasets (id, slug, name) VALUES ('ds-two', 'two', 'Two')")
        conn.execute(
            "INSERT INTO timestore.dataset_manifests (id, dataset_id, version, status, schema_version_id, manifest_shard)"
            " VALUES ('dm-two', 'ds-two', 1, 'published', 'dsv-obs-1', '2024-01-02'),"
            " ('dm-draft', 'ds-two', 2, 'draft', 'dsv-obs-1', '2024-01-03')"
        )
        rows = [
            ("pa", "ds-obs", "dm-obs", "st-local", "obs/a.parquet", '{"window": "2024-01-01T00"}', "{}"),
            ("pb", "ds-obs", "dm-obs", "st-s3", "/obs/b.parquet", "{}", '{"tableName": "t2"}'),
            (
                "pc",
                "ds-two",
                "dm-two",
                "st-root",
                "two/c.parquet",
                '{"k": [1, "x,y"]}',
                '{"schemaVersionId": "sv9"}',
            ),
            ("pd", "ds-two", "dm-two", "st-local", "s3://other/d.parquet", "{}", "{}"),
            ("pe", "ds-two", "dm-draft", "st-local", "two/e.parquet", "{}", "{}"),  # not visible
        ]
        for pid, did, mid, st, fp, pk, meta in rows:
            conn.execute(
                "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, partition_key,"
                " storage_target_id, file_format, file_path, file_size_bytes, row_count, start_time, end_time,"
                " metadata) VALUES (%s, %s, %s, %s, %s, 'parquet', %s, NULL, 7,"
                " '2024-01-01 10:00:00.123456+02', '2024-01-01 11:00:00+00', %s)",
                [pid, did, mid, pk, st, fp, meta],
            )
    _, wd = ctx_settings
    wd = wd.model_copy(update={"pg_dsn": dsn})
    built = {}
    for bulk in (True, False):
        sink = SinkSettings(
            context_path=tmp_path / f"bulk-{bulk}" / "c.duckdb", view_refresh_interval_s=0.0, bulk_load=bulk
        )
        store = ContextStore(sink, wd)
        store.open()
        try:
            store.rebuild(None, "test")
            with store.reader() as cur:
                got = cur.execute("SELECT * FROM wd.partitions ORDER BY id").fetchall()
        finally:
            store.close()
        key = ddl_columns().index("partition_key")
        built[bulk] = [tuple(json.loads(v) if i == key else v for i, v in enumerate(r)) for r in got]
    assert [r[0] for r in built[True]] == ["pa", "pb", "pc", "pd"]
    assert built[True] == built[False]
    locations = {r[0]: r[ddl_columns().index("location")] for r in built[True]}
    assert locations["pb"] == "/obs/b.parquet" and locations["pc"] == "/srv/x/two/c.parquet"
    assert locations["pd"] == "s3://other/d.parquet"


def ddl_columns() -> list[str]:
    from sinks.context import ddl

    return list(ddl.PARTITION_COLUMNS)


def test_rebuild_of_all_commits_without_logging_its_snapshot_rows(
    fresh_db, factory, ctx_settings, monkeypatch
):
    """Deltas applied during the read re-add, replace and delete partitions; replayed one by one after the
    snapshot's insert, their DELETEs hit rows the rebuild's transaction had just appended, and DuckDB then
    logged every appended row into its WAL at the commit (at 1M rows: 52 MB, a checkpoint inside the commit,
    5.4 s). The journal's rows are now left out of the snapshot and appended at the end: the commit's WAL
    stays small and the context ends as the catalog does."""
    dsn = fresh_db()
    seed_obs_catalog(dsn)
    many = 250_000  # over two of DuckDB's row groups: smaller appends are logged into the WAL anyway
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, manifest_shard, partition_key,"
            " storage_target_id, file_format, file_path, file_size_bytes, row_count, start_time, end_time,"
            " metadata) SELECT 'bulk-' || i, 'ds-obs', 'dm-obs', '2024-01-01', '{}', 'st-local', 'parquet',"
            " 'obs/bulk-' || i || '.parquet', 100, 1, '2024-01-01T00:00:00Z', '2024-01-01T01:00:00Z', '{}'"
            " FROM generate_series(1, %s) AS i",
            [many],
        )
    sink, wd = ctx_settings
    store = ContextStore(sink, wd.model_copy(update={"pg_dsn": dsn}))
    store.open()
    offset = _Offsets()
    try:
        assert store.apply(factory.create_dataset(0, "obs"), 0, offset())
        q1, q2 = factory.write_file("obs", 0, 3), factory.write_file("obs", 1, 4)
        bulk7 = {**q2, "id": "bulk-7", "file_path": "obs/bulk-7-v2.parquet"}
        real_read = store_module.read_catalog

        def read_then_apply(*args: Any, **kwargs: Any) -> Any:
            snap = real_read(*args, **kwargs)
            # during the read: q1 added then removed again, bulk-7 replaced, bulk-9 removed, q2 added
            insert_obs_partition(dsn, q2)
            with psycopg.connect(dsn) as conn:
                conn.execute("UPDATE timestore.dataset_partitions SET file_path = %s WHERE id = 'bulk-7'",
                             [bulk7["file_path"]])  # fmt: skip
                conn.execute("DELETE FROM timestore.dataset_partitions WHERE id = 'bulk-9'")
            for delta in (
                factory.delta(0, "ds-obs", upserts=[q1]),
                factory.delta(0, "ds-obs", upserts=[bulk7]),
                factory.delta(0, "ds-obs", deletes=[q1["id"], "bulk-9"]),
                factory.delta(0, "ds-obs", upserts=[q2]),
            ):
                applier = threading.Thread(target=store.apply, args=(delta, 0, offset()))
                applier.start()
                applier.join(30)
            return snap

        monkeypatch.setattr(store_module, "read_catalog", read_then_apply)
        store.rebuild(None, reason="test")
        monkeypatch.setattr(store_module, "read_catalog", real_read)
        assert len(store.builder.last.steps) and store.builder.last.wal is not None
        before, after = store.builder.last.wal
        assert after >= before, f"DuckDB checkpointed inside the commit: WAL {before} -> {after} bytes"
        assert after - before < 1 << 20, f"the commit logged {(after - before) / 2**20:.1f} MiB into the WAL"
        ids = set(_ids(store))
        assert len(ids) == many and q2["id"] in ids
        assert q1["id"] not in ids and "bulk-9" not in ids and "bulk-7" in ids
        with store.reader() as cur:
            assert cur.execute("SELECT file_path FROM wd.partitions WHERE id = 'bulk-7'").fetchall() == [
                (bulk7["file_path"],)
            ]
    finally:
        store.close()
