"""Pure-logic parts of the services: ports, pids, Java version parsing, DSNs, topic specs, missing binaries."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from stack.services import kafka as kafka_mod
from stack.services import maven as maven_mod
from stack.services import postgres as pg_mod
from stack.services.errors import BinariesMissing, PortInUse
from stack.services.proc import choose_port, free_port, pid_alive, port_is_free, read_state, write_state
from stack.services.topics import topic_specs
from walduck.config import WalduckSettings


def test_free_port_is_bindable_and_listening_port_is_not() -> None:
    port = free_port()
    assert 1024 < port < 65536 and port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)


def test_choose_port_prefers_requested_then_remembered() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(PortInUse, match=str(taken)):
            choose_port(taken, None, "thing")
        # a remembered port that is now taken is silently replaced
        assert choose_port(None, taken, "thing") != taken
    free = free_port()
    assert choose_port(None, free, "thing") == free


def test_pid_alive_sees_exit_and_zombies() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    assert pid_alive(proc.pid)
    proc.kill()
    # not yet reaped: a zombie counts as dead
    import time

    for _ in range(50):
        if not pid_alive(proc.pid):
            break
        time.sleep(0.05)
    assert not pid_alive(proc.pid)
    proc.wait()
    assert not pid_alive(None) and not pid_alive(0)


def test_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "service.json"
    assert read_state(path) == {}
    write_state(path, {"port": 1234, "pid": None})
    assert read_state(path) == {"port": 1234, "pid": None}
    path.write_text("{not json")
    assert read_state(path) == {}


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
    ],
)
def test_parse_java_version(text: str, major: int) -> None:
    assert kafka_mod.parse_java_version(text) == major


def test_missing_java_is_a_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maven_mod.shutil, "which", lambda _name: None)
    with pytest.raises(BinariesMissing, match="Java 17"):
        kafka_mod.check_java()


def test_old_java_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_mod, "java_major_version", lambda: 11)
    with pytest.raises(BinariesMissing, match="found Java 11"):
        kafka_mod.check_java()


def test_missing_mvn_is_a_readable_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(maven_mod.shutil, "which", lambda _name: None)
    with pytest.raises(BinariesMissing, match="mvn"):
        kafka_mod.resolve_kafka_libs(cache_dir=tmp_path / "cache")


def test_missing_pg_binaries_without_root_is_a_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALDUCK_PG_BIN", "/nonexistent/bin")
    assert pg_mod.find_pg_bin() is None
    monkeypatch.setattr(pg_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(BinariesMissing, match="apt-get install -y postgresql"):
        pg_mod.install_postgres()


def test_newest_pg_bin_is_found() -> None:
    found = pg_mod.find_pg_bin()
    assert found is not None and (found / "pg_ctl").exists()
    majors = sorted(pg_mod._major(d) for d in pg_mod.PG_ROOT.glob("*") if (d / "bin" / "pg_ctl").exists())
    if majors:
        assert pg_mod._major(found.parent) == majors[-1]


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:5/postgres", "postgresql://postgres@127.0.0.1:5/other"),
        ("postgresql://u@h:5/postgres?sslmode=disable", "postgresql://u@h:5/other?sslmode=disable"),
    ],
)
def test_dsn_for_database_url(dsn: str, expected: str) -> None:
    assert pg_mod.dsn_for_database(dsn, "other") == expected


def test_dsn_for_database_keyword_form() -> None:
    out = pg_mod.dsn_for_database("host=h port=5 user=u dbname=postgres", "other")
    assert "dbname=other" in out and "dbname=postgres" not in out and "host=h" in out


def test_long_socket_paths_fall_back_to_tmp(tmp_path: Path) -> None:
    short = pg_mod.LocalPostgres(tmp_path / "pg")
    assert short.socket_dir == (tmp_path / "pg" / "run").resolve()
    deep = pg_mod.LocalPostgres(tmp_path / ("x" * 120) / "pg")
    assert str(deep.socket_dir).startswith("/tmp/walduck-pg-") and len(str(deep.socket_dir)) < 60


def test_topic_specs_retention() -> None:
    specs = {s.name: s for s in topic_specs(WalduckSettings(topic_partitions=6))}
    week = str(7 * 24 * 3600 * 1000)  # changes and deltas: 7 days by default (history stops piling up)
    assert specs["walduck.changes"].configs["retention.ms"] == week
    assert specs["walduck.deltas"].configs["retention.ms"] == week
    assert specs["walduck.changes"].configs["retention.bytes"] == "-1"
    assert specs["walduck.dlq"].configs["retention.ms"] == str(7 * 24 * 3600 * 1000)  # the DLQ is bounded
    assert (
        specs["walduck.compactor-state"].configs["cleanup.policy"] == "compact"
    )  # one snapshot per partition
    assert {s.partitions for s in specs.values()} == {6}


def test_cluster_ids_never_look_like_options() -> None:
    ids = {kafka_mod._cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
