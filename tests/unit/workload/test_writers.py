"""Pure helpers of the parallel workload driver and the freshness benchmark."""

from __future__ import annotations

import math

import pytest

from stack.bench.freshness import default_writers, histogram_quantile
from stack.workload.generator import RunSummary
from stack.workload.writers import merge_summaries, split_datasets


@pytest.mark.parametrize(
    ("datasets", "writers", "expected"),
    [(16, 7, [3, 3, 2, 2, 2, 2, 2]), (8, 1, [8]), (2, 4, [1, 1, 1, 1]), (9, 3, [3, 3, 3])],
)
def test_split_datasets(datasets: int, writers: int, expected: list[int]) -> None:
    assert split_datasets(datasets, writers) == expected


def test_merge_summaries_adds_counts_and_spans_lsns() -> None:
    a = RunSummary(commits=10, operations={"append": 7, "retention": 3}, partitions_added=7, rows_written=700,
                   elapsed_s=30.1, first_lsn=100, last_lsn=900, dataset_ids=["ds-a"])  # fmt: skip
    b = RunSummary(commits=5, operations={"append": 5}, partitions_added=5, partitions_removed=2,
                   elapsed_s=30.4, first_lsn=90, last_lsn=950, dataset_ids=["ds-b"])  # fmt: skip
    merged = merge_summaries([a, b])
    assert merged.commits == 15 and merged.operations == {"append": 12, "retention": 3}
    assert (merged.partitions_added, merged.partitions_removed, merged.rows_written) == (12, 2, 700)
    assert merged.elapsed_s == 30.4 and (merged.first_lsn, merged.last_lsn) == (90, 950)
    assert merged.dataset_ids == ["ds-a", "ds-b"]
    assert merged.commit_rate == pytest.approx(15 / 30.4)


def test_default_writers() -> None:
    assert [default_writers(r) for r in (1, 50, 150, 151, 1000, 10_000)] == [1, 1, 1, 2, 7, 8]


def _buckets(name: str, counts: dict[str, float]) -> dict[str, float]:
    return {f'{name}_bucket{{le="{le}"}}': n for le, n in counts.items()}


def test_histogram_quantile_over_the_interval_between_scrapes() -> None:
    name = "walduck_x_seconds"
    before = _buckets(name, {"0.1": 10, "0.5": 10, "1.0": 10, "+Inf": 10})
    # 100 new observations: 50 in (0, 0.1], 40 in (0.1, 0.5], 10 in (0.5, 1.0]
    after = _buckets(name, {"0.1": 60, "0.5": 100, "1.0": 110, "+Inf": 110})
    assert histogram_quantile(after, before, name, 0.5) == pytest.approx(0.1)
    assert histogram_quantile(after, before, name, 0.7) == pytest.approx(0.1 + 0.4 * (20 / 40))
    assert histogram_quantile(after, before, name, 0.99) == pytest.approx(0.5 + 0.5 * (9 / 10))
    assert math.isnan(histogram_quantile(before, before, name, 0.5))  # nothing observed in between
    assert math.isnan(histogram_quantile({}, {}, name, 0.5))
