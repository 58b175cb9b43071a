"""Header-based IAM, Timestore's model (reference §4) plus dataset-level read scopes on the SQL path.

There are no tokens: a gateway in front sets ``x-iam-scopes`` (comma list) and the actor headers.
An unset requirement means the check is open; "any of the required scopes" passes; the admin scope
bypasses dataset checks.
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
