"""Header-based IAM, Timestore's model plus dataset-level read scopes on the SQL path: the one home of the rules.

There are no tokens: a gateway in front sets ``x-iam-scopes`` (comma list) and the actor headers.
An unset requirement means the check is open; "any of the required scopes" passes; the admin scope
bypasses dataset checks. :class:`IamPolicy` is built once from the settings (which only hold the raw scope
names) and is what every route asks: which scopes a route group needs (with Timestore's fallbacks), whether a
principal may read a dataset, which route groups are open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from walduck.errors import WalduckError

ACTOR_HEADERS = ("x-iam-user", "x-user-id", "x-actor-id")


@dataclass(frozen=True, slots=True)
class Principal:
    actor_id: str | None
    scopes: tuple[str, ...]

    def has_any(self, required: Sequence[str]) -> bool:
        """True when nothing is required or any required scope is held."""
        return not required or any(scope in self.scopes for scope in required)


class Forbidden(WalduckError):
    """A missing scope (403). ``message`` is what the client sees."""

    def __init__(self, message: str, dataset_slug: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.dataset_slug = dataset_slug


def parse_scopes(header: str | None) -> tuple[str, ...]:
    if not header:
        return ()
    return tuple(part.strip() for part in header.split(",") if part.strip())


def actor_id(headers: Mapping[str, str]) -> str | None:
    for name in ACTOR_HEADERS:
        value = headers.get(name)
        if value and value.strip():
            return value.strip()
    return None


def principal_from_headers(headers: Mapping[str, str]) -> Principal:
    return Principal(actor_id=actor_id(headers), scopes=parse_scopes(headers.get("x-iam-scopes")))


def require(principal: Principal, required: Sequence[str], message: str) -> None:
    if not principal.has_any(required):
        raise Forbidden(message)


def dataset_read_scopes(metadata: Mapping[str, Any] | None) -> list[str] | None:
    """``metadata.iam.readScopes`` as Timestore reads it: None when absent, [] when present but empty."""
    iam = (metadata or {}).get("iam") if isinstance(metadata, Mapping) else None
    if not isinstance(iam, Mapping):
        return None
    scopes = iam.get("readScopes")
    if not isinstance(scopes, list):
        return None
    return [s.strip() for s in scopes if isinstance(s, str) and s.strip()]


def can_read_dataset(
    principal: Principal,
    metadata: Mapping[str, Any] | None,
    *,
    admin_scopes: Sequence[str],
    fallback: Sequence[str],
) -> bool:
    """Admin scope passes; else the dataset's readScopes (if present) replace the global fallback."""
    if admin_scopes and principal.has_any(admin_scopes):
        return True
    policy = dataset_read_scopes(metadata)
    required = policy if policy is not None else list(fallback)
    return principal.has_any(required)


def readable_ids(
    principal: Principal, datasets: Iterable[Any], *, admin_scopes: Sequence[str], fallback: Sequence[str]
) -> set[str]:
    """Ids of the datasets (objects with ``id`` and ``metadata``) this principal may read."""
    return {
        d.id
        for d in datasets
        if can_read_dataset(principal, d.metadata, admin_scopes=admin_scopes, fallback=fallback)
    }


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class IamPolicy:
    """The scopes each route group requires (empty = open) and the dataset-read rule.

    Fallbacks, as Timestore resolves them: SQL read and admin fall back to the first ``require_scope``;
    SQL exec and metrics fall back to the admin scopes; a dataset without ``metadata.iam.readScopes`` needs
    the first ``require_scope``."""

    sql_read: tuple[str, ...]
    sql_exec: tuple[str, ...]
    admin: tuple[str, ...]
    metrics: tuple[str, ...]
    dataset_fallback: tuple[str, ...]

    @classmethod
    def from_scopes(
        cls,
        *,
        require_scope: str = "",
        admin_scope: str = "",
        sql_read_scope: str = "",
        sql_exec_scope: str = "",
        metrics_scope: str = "",
    ) -> IamPolicy:
        fallback = _split(require_scope)[:1]
        admin = _split(admin_scope) or fallback
        return cls(
            sql_read=_split(sql_read_scope) or fallback,
            sql_exec=_split(sql_exec_scope) or admin,
            admin=admin,
            metrics=_split(metrics_scope) or admin,
            dataset_fallback=fallback,
        )

    def is_admin(self, principal: Principal) -> bool:
        """The admin scope (configured and held) reads every dataset and the admin routes."""
        return bool(self.admin) and principal.has_any(self.admin)

    def require_sql_read(self, principal: Principal) -> None:
        require(principal, self.sql_read, "Missing required SQL read scope")

    def require_sql_exec(self, principal: Principal) -> None:
        require(principal, self.sql_exec, "Missing required SQL exec scope")

    def require_admin(self, principal: Principal) -> None:
        require(
            principal,
            self.admin,
            f"Missing required admin scope {self.admin[0] if self.admin else ''}".strip(),
        )

    def require_metrics(self, principal: Principal) -> None:
        require(principal, self.metrics, "Missing required metrics scope")

    def can_read(self, principal: Principal, metadata: Mapping[str, Any] | None) -> bool:
        return can_read_dataset(principal, metadata, admin_scopes=self.admin, fallback=self.dataset_fallback)

    def readable(self, principal: Principal, datasets: Iterable[Any]) -> set[str]:
        return readable_ids(principal, datasets, admin_scopes=self.admin, fallback=self.dataset_fallback)

    def open_route_groups(self) -> list[str]:
        """Route groups any caller reaches because no scope guards them (empty when IAM is fully configured)."""
        groups = {
            "/sql/read, /sql/schema, /sql/saved (WALDUCK_QUERY_SQL_READ_SCOPE or WALDUCK_QUERY_REQUIRE_SCOPE)": self.sql_read,
            "/sql/exec (WALDUCK_QUERY_SQL_EXEC_SCOPE or WALDUCK_QUERY_ADMIN_SCOPE)": self.sql_exec,
            "/admin/* and every dataset (WALDUCK_QUERY_ADMIN_SCOPE or WALDUCK_QUERY_REQUIRE_SCOPE)": self.admin,
            "/metrics (WALDUCK_QUERY_METRICS_SCOPE or WALDUCK_QUERY_ADMIN_SCOPE)": self.metrics,
        }
        return [name for name, scopes in groups.items() if not scopes]
