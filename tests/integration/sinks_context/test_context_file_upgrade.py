"""A context file written by an older walduck (src_offsets without its stream column) still opens."""

from __future__ import annotations

from pathlib import Path

import duckdb

from sinks.context.store import ContextStore
from sinks.settings import SinkSettings
from walduck.config import WalduckSettings


def test_old_src_offsets_table_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "ctx" / "c.duckdb"
    path.parent.mkdir()
    with duckdb.connect(str(path)) as old:
        old.execute("CREATE SCHEMA wd")
        old.execute("CREATE TABLE wd.src_offsets (src_partition INTEGER, src_offset BIGINT)")
        old.execute("INSERT INTO wd.src_offsets VALUES (0, 41)")
    walduck = WalduckSettings(
        data_dir=tmp_path / "data", storage_root=tmp_path / "storage", topic_partitions=1
    )
    (tmp_path / "storage").mkdir()
    store = ContextStore(SinkSettings(context_path=path), walduck)
    store.open()
    try:
        assert store.progress()[0].src_offset == -1  # legacy per-partition row dropped, not misread
        # and the upgraded table (its stream column now last) is written by column name, not position
        from walduck.deltas import Delta, DeltaKind

        heartbeat = Delta(DeltaKind.HEARTBEAT, 0, 50, 50, 10, 10, "2026-11-22T00:00:00+00:00")
        assert store.apply(heartbeat, 0, 0) is True
    finally:
        store.close()
    reopened = ContextStore(SinkSettings(context_path=path), walduck)
    reopened.open()
    try:
        assert reopened.progress()[0].src_offset == 50
        assert reopened.apply(heartbeat, 0, 1) is False  # the stored source offset still drops re-deliveries
    finally:
        reopened.close()
    with duckdb.connect(str(path)) as upgraded:
        cols = [r[0] for r in upgraded.execute("DESCRIBE wd.src_offsets").fetchall()]
    assert cols == ["src_partition", "src_offset", "stream"]
