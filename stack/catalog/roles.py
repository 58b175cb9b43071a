"""Least-privilege PostgreSQL roles for walduck's components (``walduck catalog roles``).

Run with an administrative DSN (``WALDUCK_PG_ADMIN_DSN``: the catalog's owner or a superuser), after the
migrations and ``connector setup``. Idempotent: roles are created when missing and their attributes and
grants are (re)set on every run, so a role someone widened by hand is narrowed again.

| role (default name) | DSN setting | attributes | privileges |
|---|---|---|---|
| ``walduck_connector`` | ``WALDUCK_PG_DSN`` | ``LOGIN REPLICATION`` | ``SELECT`` on the published catalog tables; its own state table ``<state schema>.connector_state`` |
| ``walduck_reader`` | ``WALDUCK_PG_READ_DSN`` | ``LOGIN`` | ``SELECT`` on the catalog schema's tables (context rebuilds, manifests, saved queries); ``INSERT`` on ``dataset_access_audit``; writes on ``sql_saved_queries`` (the service's own routes) |
| ``walduck_exec`` | ``WALDUCK_PG_EXEC_DSN`` | ``LOGIN`` | ``/sql/exec`` parity on the catalog schema: ``SELECT INSERT UPDATE DELETE`` on its tables, its sequences; no DDL |

Every role is ``NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS`` and is revoked from
:data:`SERVER_ACCESS_ROLES` (``COPY … TO PROGRAM``, server files). The role name and password come from the
role's DSN when it names a user (so a Secret holding the DSN is the only place the password lives); without
one the default name is used, without a password (trust/peer/cert authentication).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from walduck.config import WalduckSettings
from walduck.errors import WalduckError

CONNECTOR_ROLE = "walduck_connector"
READER_ROLE = "walduck_reader"
EXEC_ROLE = "walduck_exec"
SERVER_ACCESS_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")
"""Predefined roles that reach the server's OS (programs, files): never granted to a walduck role."""

PUBLISHED_TABLES = (
    "storage_targets",
    "datasets",
    "dataset_schema_versions",
    "dataset_manifests",
    "dataset_partitions",
)
_NARROW = sql.SQL("NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT")


class RoleSetupError(WalduckError, RuntimeError):
    """The roles step could not run (e.g. the admin DSN may not create roles)."""


@dataclass(frozen=True, slots=True)
class RoleLogin:
    name: str
    password: str | None


def dsn_user(dsn: str) -> str | None:
    return conninfo_to_dict(dsn).get("user") if dsn else None  # type: ignore[return-value]


def with_user(dsn: str, user: str, password: str | None = None) -> str:
    """``dsn`` with another user (and password when given): the derived DSN of a role."""
    params: dict[str, str] = {"user": user}
    if password is not None:
        params["password"] = password
    return make_conninfo(dsn, **params)


def login_from(dsn: str, default: str) -> RoleLogin:
    """The role a DSN logs in as: its ``user``/``password``, else ``default`` without a password."""
    if not dsn:
        return RoleLogin(default, None)
    info = conninfo_to_dict(dsn)
    return RoleLogin(str(info.get("user") or default), info.get("password"))  # type: ignore[arg-type]


def role_dsns(settings: WalduckSettings, admin_dsn: str) -> dict[str, str]:
    """DSN per role: the configured one, else ``admin_dsn`` with the default role name (local stacks)."""
    configured = {
        CONNECTOR_ROLE: settings.pg_dsn if settings.pg_dsn and settings.pg_dsn != admin_dsn else "",
        READER_ROLE: settings.pg_read_dsn,
        EXEC_ROLE: settings.pg_exec_dsn,
    }
    return {role: dsn or with_user(admin_dsn, role) for role, dsn in configured.items()}


def _ensure_role(conn: psycopg.Connection, login: RoleLogin, *, replication: bool) -> None:
    ident = sql.Identifier(login.name)
    attrs = sql.SQL(" ").join(
        [
            sql.SQL("LOGIN"),
            _NARROW,
            sql.SQL("REPLICATION" if replication else "NOREPLICATION"),
            sql.SQL("PASSWORD {}").format(sql.Literal(login.password)) if login.password else sql.SQL(""),
        ]
    )
    for attempt in range(3):
        # roles are cluster-wide: another database's setup may create or alter the same role meanwhile
        try:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login.name]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} {}").format(ident, attrs))
            return
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation, psycopg.errors.InternalError):
            if attempt == 2:
                raise


def _revoke_server_access(conn: psycopg.Connection, role: str) -> None:
    for granted in conn.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
        " JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
        [role],
    ).fetchall():
        # a walduck role is a member of nothing: memberships are how SET ROLE reaches more privilege
        conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(granted[0]), sql.Identifier(role)))


def ensure_roles(
    admin_dsn: str, settings: WalduckSettings, *, state_schema: str = "walduck"
) -> dict[str, str]:
    """Create/narrow the three roles and their grants; returns ``{default role name: DSN}``."""
    from connectors.setup import ensure_state_table

    dsns = role_dsns(settings, admin_dsn)
    admin_user = dsn_user(admin_dsn)
    logins = {role: login_from(dsn, role) for role, dsn in dsns.items()}
    if admin_user in {login.name for login in logins.values()}:
        raise RoleSetupError(f"the admin DSN's user {admin_user!r} cannot also be a component role")
    schema = sql.Identifier(settings.catalog_schema)
    state = sql.Identifier(state_schema)
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            ensure_state_table(conn, state_schema)
            connector = sql.Identifier(logins[CONNECTOR_ROLE].name)
            reader = sql.Identifier(logins[READER_ROLE].name)
            executor = sql.Identifier(logins[EXEC_ROLE].name)
            _ensure_role(conn, logins[CONNECTOR_ROLE], replication=True)
            _ensure_role(conn, logins[READER_ROLE], replication=False)
            _ensure_role(conn, logins[EXEC_ROLE], replication=False)

            def grant(statement: LiteralString, *names: sql.Composable) -> None:
                conn.execute(sql.SQL(statement).format(*names))

            for login in logins.values():
                _revoke_server_access(conn, login.name)
                grant("GRANT USAGE ON SCHEMA {} TO {}", schema, sql.Identifier(login.name))
            with conn.transaction():
                # connector: read the published tables (snapshot), its state table, nothing else
                for table in PUBLISHED_TABLES:
                    grant("GRANT SELECT ON {}.{} TO {}", schema, sql.Identifier(table), connector)
                grant("GRANT USAGE ON SCHEMA {} TO {}", state, connector)
                grant("GRANT SELECT, INSERT, UPDATE, DELETE ON {}.connector_state TO {}", state, connector)
                # reader: the query service's catalog reads and its own two writes
                grant("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}", schema, reader)
                grant("GRANT INSERT ON {}.dataset_access_audit TO {}", schema, reader)
                grant("GRANT SELECT, INSERT, UPDATE, DELETE ON {}.sql_saved_queries TO {}", schema, reader)
                # exec: Timestore's /sql/exec parity on the catalog schema, DML only
                grant(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}", schema, executor
                )
                grant("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}", schema, executor)
                # tables the admin creates later (new migrations, Timestore's own) get the same grants
                grant("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}", schema, reader)
                grant(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}",
                    schema,
                    executor,
                )
                grant(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE, SELECT ON SEQUENCES TO {}",
                    schema,
                    executor,
                )
            problems = privileged_roles(conn, [login.name for login in logins.values()])
    except psycopg.errors.InsufficientPrivilege as exc:
        raise RoleSetupError(
            f"the admin DSN may not create or grant roles ({exc}); run `walduck catalog roles` with the catalog"
            " owner's or a superuser's DSN (WALDUCK_PG_ADMIN_DSN)"
        ) from exc
    if problems:
        raise RoleSetupError(f"roles still privileged after setup: {problems}")
    return dsns


def privileged_roles(conn: psycopg.Connection, roles: list[str]) -> dict[str, list[str]]:
    """``{role: [superuser or server-access roles it is or reaches through membership]}``, empty when clean."""
    rows = conn.execute(
        "SELECT r.rolname, p.rolname FROM pg_roles r JOIN pg_roles p ON pg_has_role(r.oid, p.oid, 'MEMBER')"
        " WHERE r.rolname = ANY(%s) AND (p.rolsuper OR p.rolname = ANY(%s)) ORDER BY 1, 2",
        [roles, list(SERVER_ACCESS_ROLES)],
    ).fetchall()
    out: dict[str, list[str]] = {}
    for role, reached in rows:
        out.setdefault(role, []).append(reached)
    return out


def use_roles(settings: WalduckSettings, dsns: dict[str, str], admin_dsn: str) -> None:
    """Point ``settings`` at the role DSNs (components) and keep the admin DSN for setup/workload only."""
    settings.pg_admin_dsn = admin_dsn
    settings.pg_dsn = dsns[CONNECTOR_ROLE]
    settings.pg_read_dsn = dsns[READER_ROLE]
    settings.pg_exec_dsn = dsns[EXEC_ROLE]


def provision(settings: WalduckSettings, *, state_schema: str = "walduck") -> list[str]:
    """The whole catalog setup as the admin DSN: migrations, ``connector setup``, roles; then ``settings`` uses
    the roles (:func:`use_roles`). Returns the migrations applied now. Used by ``walduck up``."""
    from connectors.setup import setup as connector_setup
    from stack.catalog.migrate import apply_migrations

    admin = settings.admin_dsn()
    applied = apply_migrations(admin, settings.catalog_schema)
    connector_setup(settings.model_copy(update={"pg_dsn": admin}), state_schema)
    use_roles(settings, ensure_roles(admin, settings, state_schema=state_schema), admin)
    return applied
