"""FilePresence: cached directory listings must never hide a file deleted or created since."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sinks.context.file_presence import FilePresence
from sinks.context.relation import FileGroup, relation_sql


def _age(path: Path, seconds: float) -> None:
    """Make a directory's mtime look ``seconds`` old (so its listing is cacheable, not racy)."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_deleted_and_created_files_are_seen_through_the_cache(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    d.mkdir()
    a, b = d / "a.parquet", d / "b.parquet"
    a.write_bytes(b"x")
    _age(d, 10)
    presence = FilePresence(racy_s=0.1)
    probe = presence.probe()
    assert not probe.missing(str(a)) and probe.missing(str(b))
    assert str(d) in presence._listings  # old enough: cached
    a.unlink()
    b.write_bytes(b"y")
    probe = presence.probe()
    assert probe.missing(str(a)) and not probe.missing(str(b))


def test_racy_listing_is_not_cached_and_missing_dir_means_missing(tmp_path: Path) -> None:
    d = tmp_path / "fresh"
    d.mkdir()
    (d / "a.parquet").write_bytes(b"x")
    presence = FilePresence(racy_s=60)
    assert not presence.probe().missing(str(d / "a.parquet"))
    assert str(d) not in presence._listings
    assert presence.probe().missing(str(tmp_path / "nope" / "a.parquet"))
    assert not presence.probe().missing("s3://bucket/a.parquet")


def test_forget_drops_the_directory_listing(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    d.mkdir()
    a = d / "a.parquet"
    a.write_bytes(b"x")
    _age(d, 10)
    presence = FilePresence(racy_s=0.1)
    assert not presence.probe().missing(str(a))
    # a deletion the mtime cannot show (same tick, or a filesystem with coarse mtimes): simulated by
    # restoring the old mtime after the unlink; only forget() (DuckDB reported the file missing) helps
    st = d.stat()
    a.unlink()
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not presence.probe().missing(str(a))
    presence.forget(str(a))
    assert presence.probe().missing(str(a))


def test_groups_with_the_same_select_list_become_one_scan() -> None:
    cols = [("ts", "TIMESTAMP"), ("value", "DOUBLE")]
    same = {"ts": "TIMESTAMP", "value": "DOUBLE"}
    sql = relation_sql(
        cols,
        [
            FileGroup(same, ["/a.parquet"]),
            FileGroup(dict(same), ["/b.parquet"]),
            FileGroup(None, ["/c.parquet"]),
        ],
    )
    assert sql == (
        "SELECT \"ts\", \"value\" FROM read_parquet(['/a.parquet', '/b.parquet', '/c.parquet'], "
        "hive_partitioning = false)"
    )
    older = relation_sql(
        cols, [FileGroup(same, ["/a.parquet"]), FileGroup({"ts": "TIMESTAMP"}, ["/b.parquet"])]
    )
    assert older.count("read_parquet") == 2 and "CAST(NULL AS DOUBLE)" in older
