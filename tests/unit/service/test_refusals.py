"""One mapping of the planner's refusals to API answers, by type (issue 14: no class-name strings)."""

from __future__ import annotations

import pytest

from sinks.context.guard import GuardViolation
from sinks.context.planner import (
    AmbiguousRelation,
    ForbiddenDataset,
    ForbiddenFunction,
    PlanError,
    UnknownRelation,
    UnsupportedStatement,
)
from sinks.service.refusals import refusal_of


def test_forbidden_and_unknown_datasets_look_the_same_to_a_scoped_caller() -> None:
    forbidden = refusal_of(ForbiddenDataset("secret"), reads_everything=False)
    unknown = refusal_of(UnknownRelation("timestore.secret"), reads_everything=False)
    assert forbidden is not None and unknown is not None
    assert (forbidden.status, forbidden.message, forbidden.dataset) == (
        unknown.status,
        unknown.message,
        "secret",
    )
    assert forbidden.status == 403 and (forbidden.kind, unknown.kind) == ("forbidden", "unknown")


def test_the_admin_hears_that_a_dataset_is_unknown() -> None:
    refusal = refusal_of(UnknownRelation("timestore.nope"), reads_everything=True)
    assert refusal is not None and (refusal.kind, refusal.status, refusal.dataset) == ("sandbox", 400, None)
    assert "unknown relation timestore.nope" in refusal.message


def test_an_ambiguous_relation_is_a_400_with_the_datasets_not_a_403() -> None:
    refusal = refusal_of(AmbiguousRelation("timestore.m", ["a", "b"]), reads_everything=False)
    assert refusal is not None and (refusal.kind, refusal.status) == ("sandbox", 400)
    assert "a, b" in refusal.message


@pytest.mark.parametrize("exc", [ForbiddenFunction("read_csv"), UnsupportedStatement("DELETE")])
def test_sandbox_refusals_keep_the_planner_message(exc: PlanError) -> None:
    refusal = refusal_of(exc, reads_everything=False)
    assert refusal is not None and refusal.status == 400 and refusal.message == str(exc)


def test_a_guard_violation_is_refused_and_anything_else_is_not_a_refusal() -> None:
    guard = refusal_of(GuardViolation("reaches read_parquet"), reads_everything=True)
    assert guard is not None and guard.kind == "guard" and "reaches read_parquet" in guard.message
    assert refusal_of(PlanError("other"), reads_everything=False) is None
    assert refusal_of(ValueError("x"), reads_everything=False) is None
