"""The planner's and execution guard's refusals as the API words them: one mapping, caught by type.

Used by ``/sql/read`` (``sql_routes._plan``: status + audit) and by the SQL jobs' scripts
(``jobs/chain.py``: a failed job with the same message), so a statement refused on one is refused with the
same words on the other. A caller who may not read every dataset hears the same 403 for a forbidden and
for an unknown ``timestore.<slug>`` relation (no existence oracle, ``errors.not_readable``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sinks.context import guard
from sinks.context.planner import (
    AmbiguousRelation,
    ForbiddenDataset,
    ForbiddenFunction,
    UnknownRelation,
    UnsupportedStatement,
)
from sinks.service.errors import not_readable

RefusalKind = Literal["guard", "forbidden", "unknown", "sandbox"]
_DATASET_PREFIX = "timestore."


@dataclass(frozen=True, slots=True)
class Refusal:
    """``kind``: ``guard`` (the planned SQL reached further than the policy allowed: a bug, 400),
    ``forbidden`` / ``unknown`` (403 naming ``dataset``), ``sandbox`` (400 with the planner's message)."""

    kind: RefusalKind
    status: int
    message: str
    dataset: str | None = None


def refusal_of(exc: BaseException, reads_everything: bool) -> Refusal | None:
    """The API's answer to a planning error, or None when ``exc`` is not a refusal (re-raise it)."""
    if isinstance(exc, guard.GuardViolation):
        return Refusal("guard", 400, f"Statement is not permitted on /sql/read ({exc})")
    if isinstance(exc, ForbiddenDataset):
        slug = exc.slug or (str(exc.args[0]) if exc.args else "?")
        return Refusal("forbidden", 403, not_readable(slug).message, slug)
    if (
        isinstance(exc, UnknownRelation)
        and not isinstance(exc, AmbiguousRelation)
        and exc.name.startswith(_DATASET_PREFIX)
        and not reads_everything
    ):
        slug = exc.name[len(_DATASET_PREFIX) :]
        return Refusal("unknown", 403, not_readable(slug).message, slug)
    if isinstance(exc, UnknownRelation | ForbiddenFunction | UnsupportedStatement):
        return Refusal("sandbox", 400, str(exc))
    return None
