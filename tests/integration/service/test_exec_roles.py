"""Issue 13 finding 2: no shell from SQL. ``/sql/exec`` must not reach the OS of the PostgreSQL server.

Against the suite's real PostgreSQL: ``walduck catalog roles`` (``ensure_roles``) creates the connector, reader
and exec roles; what they may do is read from PostgreSQL's own catalogs (``pg_roles``, ``has_table_privilege``,
``pg_has_role``), and ``COPY (select 1) TO PROGRAM …`` sent through ``/sql/exec`` is shown not to run (a marker
file the program would create stays absent; the positive control with an explicitly allowed superuser shows
the marker does appear when the command runs).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from integration.service.test_service_contract import seeded_catalog

from sinks.context.store import ContextStore
from sinks.service.app import create_app
from sinks.service.audit import MemoryAudit
from sinks.service.settings import QuerySettings
from sinks.settings import SinkSettings
from stack.catalog.roles import (
    CONNECTOR_ROLE,
    EXEC_ROLE,
    READER_ROLE,
    SERVER_ACCESS_ROLES,
    ensure_roles,
    with_user,
)

pytestmark = pytest.mark.integration

EXEC = {"x-iam-scopes": "sql:read,sql:exec", "x-iam-user": "mallory"}
ROLES = (CONNECTOR_ROLE, READER_ROLE, EXEC_ROLE)


@pytest.fixture
def catalog(fresh_db: Callable[[], str], tmp_path: Path) -> dict[str, Any]:
    dsn, _storage, settings = seeded_catalog(fresh_db, tmp_path)
    dsns = ensure_roles(dsn, settings)
    return {"admin": dsn, "dsns": dsns, "settings": settings, "tmp": tmp_path}


@pytest.fixture
def marker() -> Any:
    """A path the PostgreSQL OS user could create (world-writable dir): it exists iff the program ran."""
    folder = Path(tempfile.mkdtemp(prefix="walduck-shell-"))
    os.chmod(folder, 0o777)
    path = folder / f"ran-{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)
    folder.rmdir()


@pytest.fixture
async def service(catalog: dict[str, Any]) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[httpx.AsyncClient, Any, ContextStore]] = []

    async def make(exec_dsn: str, **settings: Any) -> tuple[httpx.AsyncClient, MemoryAudit]:
        tmp: Path = catalog["tmp"]
        reader_dsn = catalog["dsns"][READER_ROLE]
        walduck = catalog["settings"].model_copy(update={"pg_dsn": reader_dsn})
        store = ContextStore(
            SinkSettings(
                context_path=tmp / f"ctx-{uuid.uuid4().hex[:6]}" / "c.duckdb", view_refresh_interval_s=0.0
            ),
            walduck,
        )
        store.open()
        store.rebuild(None, "test-bootstrap")  # as the reader role: its SELECT grants suffice for a rebuild
        audit = MemoryAudit()
        app = create_app(
            store,
            QuerySettings(
                sql_read_scope="sql:read", sql_exec_scope="sql:exec", admin_scope="admin", **settings
            ),
            pg_dsn=reader_dsn,
            exec_dsn=exec_dsn,
            audit=audit,
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30)
        made.append((client, app, store))
        return client, audit

    yield make
    for client, app, store in made:
        await client.aclose()
        app.state.svc.runner.close()
        store.close()


def copy_to_program(marker: Path) -> dict[str, str]:
    return {"sql": f"COPY (select 1) TO PROGRAM 'touch {marker}'"}


async def test_copy_to_program_does_not_run_as_the_exec_role(
    catalog: dict[str, Any], service: Any, marker: Path
) -> None:
    client, audit = await service(catalog["dsns"][EXEC_ROLE])
    r = await client.post("/sql/exec", json=copy_to_program(marker), headers=EXEC)
    assert r.status_code in (400, 403), r.text
    assert "permission denied" in r.json()["message"] or "must be superuser" in r.json()["message"]
    assert not await asyncio.to_thread(marker.exists)
    for attack in (
        "SELECT pg_read_file('/etc/passwd')",
        "COPY sql_samples FROM PROGRAM 'id'",
        "CREATE TABLE owned (x int)",
        "SET ROLE postgres",
        "ALTER ROLE walduck_exec SUPERUSER",
    ):
        r = await client.post("/sql/exec", json={"sql": attack}, headers=EXEC)
        message = r.json().get("message", "")
        assert r.status_code == 400 and ("permission denied" in message or "must be" in message), (
            attack,
            r.text,
        )
    # Timestore parity on the catalog schema still works: reads and DML, on tables made before and after setup
    r = await client.post("/sql/exec", json={"sql": "SELECT count(*) AS n FROM sql_samples"}, headers=EXEC)
    assert r.json() == [{"n": 2}]
    with psycopg.connect(catalog["admin"], autocommit=True) as conn:
        conn.execute("CREATE TABLE timestore.later_table (id serial PRIMARY KEY, v text)")
    r = await client.post("/sql/exec", json={"sql": "INSERT INTO later_table (v) VALUES ('x')"}, headers=EXEC)
    assert r.json() == {"command": "INSERT", "rowCount": 1}, r.text
    assert [e.metadata.get("reason") for e in audit.entries if not e.success][:1] == ["error"]


async def test_superuser_exec_connection_is_refused(
    catalog: dict[str, Any], service: Any, marker: Path
) -> None:
    client, audit = await service(catalog["admin"])  # the suite's superuser DSN
    r = await client.post("/sql/exec", json=copy_to_program(marker), headers=EXEC)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "WALDUCK_EXEC_PRIVILEGED_CONNECTION"
    assert "WALDUCK_PG_EXEC_DSN" in r.json()["message"]
    assert not await asyncio.to_thread(marker.exists)
    [entry] = audit.entries
    assert (entry.action, entry.success, entry.metadata["reason"]) == (
        "sql.exec",
        False,
        "privileged-connection",
    )
    # positive control: the explicit flag lets it through, and then the program does run (the marker is a real
    # oracle for "the command ran")
    allowed, _ = await service(catalog["admin"], exec_allow_superuser=True)
    r = await allowed.post("/sql/exec", json=copy_to_program(marker), headers=EXEC)
    assert r.status_code == 200, r.text
    assert await asyncio.to_thread(marker.exists)


async def test_member_of_a_server_access_role_is_refused(
    catalog: dict[str, Any], service: Any, marker: Path
) -> None:
    role = f"wd_member_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(catalog["admin"], autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN NOINHERIT IN ROLE pg_execute_server_program")
    try:
        client, _ = await service(with_user(catalog["admin"], role))
        r = await client.post("/sql/exec", json=copy_to_program(marker), headers=EXEC)
        assert r.status_code == 403 and "pg_execute_server_program" in r.json()["message"], r.text
        assert not await asyncio.to_thread(marker.exists)
    finally:
        with psycopg.connect(catalog["admin"], autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_roles_as_postgresql_sees_them(catalog: dict[str, Any]) -> None:
    with psycopg.connect(catalog["admin"], autocommit=True) as conn:
        attrs = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT rolname, rolsuper, rolreplication, rolcanlogin, rolcreaterole, rolcreatedb, rolbypassrls"
                " FROM pg_roles WHERE rolname = ANY(%s)",
                [list(ROLES)],
            )
        }
        assert attrs == {
            CONNECTOR_ROLE: (False, True, True, False, False, False),
            READER_ROLE: (False, False, True, False, False, False),
            EXEC_ROLE: (False, False, True, False, False, False),
        }
        for role in ROLES:
            for danger in SERVER_ACCESS_ROLES:
                (member,) = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [role, danger]).fetchone()  # type: ignore[misc]
                assert member is False, (role, danger)
            (create,) = conn.execute(
                "SELECT has_schema_privilege(%s, 'timestore', 'CREATE')", [role]
            ).fetchone()  # type: ignore[misc]
            assert create is False, role

        def priv(role: str, table: str, what: str) -> bool:
            row = conn.execute(
                "SELECT has_table_privilege(%s, %s, %s)", [role, f"timestore.{table}", what]
            ).fetchone()
            assert row is not None
            return bool(row[0])

        published = [
            "storage_targets",
            "datasets",
            "dataset_schema_versions",
            "dataset_manifests",
            "dataset_partitions",
        ]
        for table in published:
            assert priv(CONNECTOR_ROLE, table, "SELECT") and not priv(CONNECTOR_ROLE, table, "INSERT")
            assert priv(READER_ROLE, table, "SELECT") and not priv(READER_ROLE, table, "UPDATE")
            assert priv(EXEC_ROLE, table, "SELECT") and priv(EXEC_ROLE, table, "UPDATE")
        assert not priv(CONNECTOR_ROLE, "sql_saved_queries", "SELECT")
        assert not priv(CONNECTOR_ROLE, "dataset_access_audit", "SELECT")
        assert priv(READER_ROLE, "dataset_access_audit", "INSERT")
        assert not priv(READER_ROLE, "dataset_access_audit", "DELETE")
        assert priv(READER_ROLE, "sql_saved_queries", "INSERT") and priv(
            READER_ROLE, "sql_saved_queries", "DELETE"
        )
        assert not priv(EXEC_ROLE, "datasets", "TRUNCATE")
        (state,) = conn.execute(
            "SELECT has_table_privilege(%s, 'walduck.connector_state', 'INSERT')", [CONNECTOR_ROLE]
        ).fetchone()  # type: ignore[misc]
        assert state is True


def test_roles_step_narrows_a_widened_role(catalog: dict[str, Any]) -> None:
    """Idempotent and corrective: a role someone made superuser or a member of a server-access role is narrowed."""
    with psycopg.connect(catalog["admin"], autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {EXEC_ROLE} SUPERUSER")
        conn.execute(f"GRANT pg_execute_server_program TO {READER_ROLE}")
    ensure_roles(catalog["admin"], catalog["settings"])
    with psycopg.connect(catalog["admin"], autocommit=True) as conn:
        (sup,) = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [EXEC_ROLE]).fetchone()  # type: ignore[misc]
        (member,) = conn.execute(
            "SELECT pg_has_role(%s, 'pg_execute_server_program', 'MEMBER')", [READER_ROLE]
        ).fetchone()  # type: ignore[misc]
    assert (sup, member) == (False, False)


def test_connector_and_reader_roles_can_do_their_jobs(catalog: dict[str, Any]) -> None:
    """What the connector and the query service run at runtime works under their roles."""
    with psycopg.connect(catalog["dsns"][CONNECTOR_ROLE], autocommit=True) as conn:
        conn.execute("SELECT pg_logical_emit_message(false, 'walduck-test', 'x')")  # heartbeats
        assert conn.execute("SELECT count(*) FROM timestore.dataset_partitions").fetchone() == (2,)
        conn.execute(
            "INSERT INTO walduck.connector_state (slot_name) VALUES ('probe') ON CONFLICT DO NOTHING"
        )
        conn.execute("DELETE FROM walduck.connector_state WHERE slot_name = 'probe'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM timestore.datasets")
    with psycopg.connect(catalog["dsns"][READER_ROLE], autocommit=True) as conn:
        conn.execute("SELECT pg_current_wal_lsn()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE timestore.datasets SET name = 'x'")


def test_walduck_catalog_roles_command(catalog: dict[str, Any]) -> None:
    """The operator's command: names (and passwords) from the role DSNs, admin from WALDUCK_PG_ADMIN_DSN."""
    from typer.testing import CliRunner

    from stack.cli import app

    name = f"wd_reader_{uuid.uuid4().hex[:6]}"
    env = {
        "WALDUCK_PG_ADMIN_DSN": catalog["admin"],
        "WALDUCK_PG_DSN": "",
        "WALDUCK_PG_READ_DSN": with_user(catalog["admin"], name, "s3cret-pw"),
        "WALDUCK_PG_EXEC_DSN": "",
    }
    done = CliRunner().invoke(app, ["catalog", "roles"], env=env)
    try:
        assert done.exit_code == 0, done.output
        assert f"role {name} (walduck_reader) ready" in done.output
        with psycopg.connect(catalog["admin"], autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolcanlogin, rolsuper, has_table_privilege(%s, 'timestore.datasets', 'SELECT'),"
                " rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s",
                [name, name],
            ).fetchone()
        assert row == (True, False, True, True)
        # a non-admin DSN cannot run the step: a clear error, exit 1
        with psycopg.connect(catalog["admin"], autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {name}_nobody LOGIN")
        nobody = with_user(catalog["admin"], f"{name}_nobody")
        done = CliRunner().invoke(app, ["catalog", "roles"], env={**env, "WALDUCK_PG_ADMIN_DSN": nobody})
        assert done.exit_code == 1 and "admin DSN may not" in done.output, done.output
        # and it may not be one of the component roles itself
        done = CliRunner().invoke(
            app, ["catalog", "roles"], env={**env, "WALDUCK_PG_ADMIN_DSN": catalog["dsns"][EXEC_ROLE]}
        )
        assert done.exit_code == 1 and "cannot also be a component role" in done.output, done.output
    finally:
        with psycopg.connect(catalog["admin"], autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {name}")
            conn.execute(f"DROP ROLE IF EXISTS {name}")
            conn.execute(f"DROP ROLE IF EXISTS {name}_nobody")
