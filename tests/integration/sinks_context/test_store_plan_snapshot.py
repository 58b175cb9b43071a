"""Plan and execution guard read one index snapshot (issue 13 finding 1's guard under compaction).

Regression: with 20 readers during compactions, 4 of 945 ``/sql/read`` answered 503 "The context changed
while planning": the guard's check read the partition index after an apply had replaced a planned file.
Here the apply is forced between plan and check, every time."""

from __future__ import annotations

import pytest
import sqlglot

from sinks.context import guard
from sinks.context.planner import plan


def _compaction_between_plan_and_check(store, factory, apply):
    """A planner that, after planning, commits a compaction replacing every file it just planned."""

    def planner(expression, st, allowed, param_count=0):
        planned = plan(expression, st, allowed, param_count)
        current = [p["partitionId"] for p in st.partition_index("ds-obs")]
        apply(factory.delta(1, "ds-obs", upserts=[factory.write_file("obs", 0, 7)], deletes=current))
        return planned

    return planner


def test_an_apply_between_plan_and_check_cannot_fail_the_check(store, factory, apply) -> None:
    apply(factory.create_dataset(1, "obs"))
    apply(factory.delta(1, "ds-obs", upserts=[factory.write_file("obs", 0, 5) for _ in range(3)]))
    expression = sqlglot.parse_one("SELECT count(*) FROM timestore.obs", read="duckdb")
    planner = _compaction_between_plan_and_check(store, factory, apply)
    for _ in range(3):
        planned = guard.plan_verified(planner, expression, store, {"ds-obs"})
        lists = [planned.params[n - planned.param_base - 1] for n in planned.file_params]
        assert lists and all(lists), "the plan lists the files it was planned from"
    # outside the block the index moved on: the same plan checked now names files no longer listed
    with pytest.raises(guard.FilesNotListed):
        guard.verify(store, planned, {"ds-obs"})
