"""A rebuild from PostgreSQL that raises is counted (walduck_rebuild_failures_total, alert WalduckRebuildFailures)."""

from __future__ import annotations

import pytest

from sinks.context.store import ContextStore
from walduck import metrics


def _failures(scope: str) -> float:
    return metrics.REBUILD_FAILURES.labels(scope=scope)._value.get()


def test_a_failed_rebuild_is_counted_by_scope_and_re_raised() -> None:
    store = ContextStore.__new__(ContextStore)  # only rebuild()'s own bookkeeping runs
    store._rebuilds_running = 0

    def unreachable(*_args: object) -> None:
        raise ConnectionError("catalog database unreachable")

    store._rebuild = unreachable
    before_full, before_dataset = _failures("full"), _failures("dataset")
    with pytest.raises(ConnectionError):
        store.rebuild()
    with pytest.raises(ConnectionError):
        store.rebuild("ds-1")
    assert _failures("full") == before_full + 1
    assert _failures("dataset") == before_dataset + 1
    assert not store.rebuilding()
