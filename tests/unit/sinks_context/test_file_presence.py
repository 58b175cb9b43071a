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


def test_outside_the_roots(tmp_path: Path) -> None:
    from sinks.context.file_presence import FileState

    root, out = tmp_path / "root", tmp_path / "out"
    (root / "d").mkdir(parents=True)
    out.mkdir()
    (root / "d" / "a.parquet").write_bytes(b"x")
    (out / "f.parquet").write_bytes(b"x")
    (root / "d" / "link.parquet").symlink_to(out / "f.parquet")
    (root / "d" / "inner.parquet").symlink_to(root / "d" / "a.parquet")
    (root / "d" / "dangling.parquet").symlink_to(root / "d" / "gone.parquet")
    (root / "dirlink").symlink_to(out, target_is_directory=True)
    probe = FilePresence(racy_s=0.0, roots=[str(root)]).probe()
    assert probe.state(str(root / "d" / "a.parquet")) is FileState.PRESENT
    assert probe.state(str(root / "d" / "inner.parquet")) is FileState.PRESENT
    assert probe.state(str(root / "d" / "dangling.parquet")) is FileState.MISSING
    assert probe.state(str(root / "d" / "nope.parquet")) is FileState.MISSING
    assert probe.state(str(root / "d" / "link.parquet")) is FileState.OUTSIDE
    assert probe.state(str(root / "dirlink" / "f.parquet")) is FileState.OUTSIDE
    assert probe.state(f"{root}/d/../../out/f.parquet") is FileState.OUTSIDE
    assert probe.state(str(out / "f.parquet")) is FileState.OUTSIDE
    assert probe.state(f"{root}x/f.parquet") is FileState.OUTSIDE  # a sibling sharing the root's prefix
    assert probe.state("s3://bucket/a.parquet") is FileState.PRESENT
    assert not probe.missing(str(root / "d" / "link.parquet"))  # outside is not "missing"
