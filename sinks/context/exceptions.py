"""The context package's errors: one module, every class under :class:`walduck.errors.WalduckError`.

Two families: the store's (:class:`ContextError`: the store is closed, a dataset it does not hold, every
reader busy) and the planner's refusals (:class:`PlanError`; the execution guard's :class:`GuardViolation`
is one). ``sinks/service/refusals.py`` maps the refusals to API answers, by type.
"""

from __future__ import annotations

from walduck.errors import WalduckError


class ContextError(WalduckError, RuntimeError):
    """Base of the context store's named errors."""


class ReaderPoolExhausted(ContextError):
    """No reader cursor became free within ``reader_wait_s``."""


class UnknownDataset(ContextError):
    """A dataset id the context does not hold."""


class StoreNotOpen(ContextError):
    """The store was used before :meth:`ContextStore.open` or after :meth:`ContextStore.close`."""


class SnapshotUnusable(ContextError):
    """The published context snapshot cannot seed this context (``context_snapshot.restore``); ``reason`` is
    short and bounded (a metric label): incompatible, corrupt."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"context snapshot unusable ({reason}): {detail}")
        self.reason = reason


class PlanError(WalduckError, ValueError):
    """Base of the planner's named errors."""


class UnknownRelation(PlanError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown relation {name}")
        self.name = name


class AmbiguousRelation(UnknownRelation):
    def __init__(self, name: str, slugs: list[str]) -> None:
        PlanError.__init__(self, f"relation {name} is ambiguous: datasets {', '.join(slugs)} share it")
        self.name = name
        self.slugs = slugs


class ForbiddenDataset(PlanError):
    def __init__(self, slug: str) -> None:
        super().__init__(f"not allowed to read dataset {slug}")
        self.slug = slug


class ForbiddenFunction(PlanError):
    def __init__(self, name: str) -> None:
        super().__init__(f"table function {name} is not allowed")
        self.name = name


class UnsupportedStatement(PlanError):
    """Only queries (SELECT, set operations, WITH …) can be planned."""


class GuardViolation(PlanError):
    """The planned statement reaches something the caller may not read (HTTP 400, counted)."""


class FilesNotListed(GuardViolation):
    """Files of the plan the partition index does not list for the dataset they were planned for."""
